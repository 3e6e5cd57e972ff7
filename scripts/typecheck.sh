#!/usr/bin/env bash
# mypy over the `evotok` import package as installed: `evotok.model`, `evotok.export` and `evotok.service` are
# mapped onto the top-level folders by [tool.setuptools.package-dir], which mypy cannot follow (setuptools'
# editable finder is an import hook). So mypy runs on a throwaway view outside the tree, where the package is
# laid out the way Python imports it (links into the checkout, so the view is always current).
# Usage: scripts/typecheck.sh [mypy args...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
view="$(mktemp -d "${TMPDIR:-/tmp}/evotok-typecheck.XXXXXX")"
trap 'rm -rf "$view"' EXIT
mkdir -p "$view/evotok"
for entry in "$root"/evotok/*; do
  ln -s "$entry" "$view/evotok/$(basename "$entry")"
done
ln -s "$root/model" "$view/evotok/model"
ln -s "$root/export" "$view/evotok/export"
ln -s "$root/service" "$view/evotok/service"
cd "$view"
"$root/.venv/bin/mypy" --config-file "$root/pyproject.toml" "$@" evotok
