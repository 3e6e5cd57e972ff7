"""Training, data and evaluation for EvoTok (imports ``evotok.model``; the model never imports this)."""
