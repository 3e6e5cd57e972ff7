#!/usr/bin/env bash
# Run a command with every `evotok train` process paused (SIGSTOP), resumed (SIGCONT) when it ends, so a
# benchmark does not share the cores with a background training run. Usage: scripts/quiet.sh CMD [ARGS...]
set -u
pids=$(pgrep -f "evotok train" || true)
[ -n "$pids" ] && kill -STOP $pids
trap '[ -n "$pids" ] && kill -CONT $pids' EXIT
"$@"
