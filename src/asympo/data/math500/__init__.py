"""MATH-500 (Lightman et al. 2023, problems from Hendrycks et al. 2021), MIT license: the test JSONL file,
unchanged. See SOURCES.md."""
