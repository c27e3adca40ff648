"""Model families: each folder holds one architecture family's networks glue, converter and defaults."""
