"""`python -m rrd_hf.train RECIPE.yaml [--flag value ...]`: what `rrd-hf train` runs, as a module, so that
`accelerate launch -m rrd_hf.train` and `torchrun -m rrd_hf.train` can start it (`rrd_hf.commands.train`)."""

if __name__ == "__main__":
    from .commands.train import entry

    entry()
