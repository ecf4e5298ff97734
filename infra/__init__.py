"""The AWS deployment: the Pulumi program (``program.build``), its tiers (``components``)
and the boto3 tools `make images` and `make prewarm` run (``tools``)."""
