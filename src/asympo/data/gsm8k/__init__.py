"""GSM8K (Cobbe et al. 2021), MIT license: the train and test JSONL files, unchanged. See SOURCES.md."""
