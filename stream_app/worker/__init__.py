"""The Faust worker (the only Faust importer): may import config, client, web, core, model."""
