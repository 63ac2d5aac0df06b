"""One module per `tf-minilm` subcommand (argument definitions are light; work imports lazily)."""
