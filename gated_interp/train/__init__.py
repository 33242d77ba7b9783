"""Training-side helpers: tokenizer training and data windows for the language-model runs."""
