"""HTTP routes: one module per endpoint group (encode, decode, embed, info, health)."""
