"""Hugging Face import and export: convert.py picks gpt2.py or starcoder2.py; common.py is theirs."""
