"""A downloaded checkpoint into the Bento model store: sources, inspection, weight selection, manifest, import, the store and the BentoML adapter. May import sealift.core."""
