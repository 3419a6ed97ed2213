"""Word lists and phrasings the sample datasets are generated from (``vocabulary.yaml``)."""
