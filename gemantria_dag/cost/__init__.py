"""What LLM calls cost: model prices (`prices`) and a run's spending limits (`budget`)."""
