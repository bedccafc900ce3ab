"""The `rrd-hf` command line (`cli`), one module per subcommand that needs more than a parser (`train`, `demo`,
`push`), and the tuning of the processes the command line starts (`process`)."""
