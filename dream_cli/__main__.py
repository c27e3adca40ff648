"""`python -m dream_cli ...`: the `dream` command, for launchers that run a module
(`accelerate launch -m dream_cli train ...`, `torchrun -m dream_cli train ...`)."""

from dream_cli import main

if __name__ == "__main__":
    main()
