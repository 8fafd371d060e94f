"""The .edgepkg bundle: one file that carries a model to a device.

manifest.py  the versioned manifest (what is in the bundle, where it came from) and BundleError
refstats.py  reference statistics of the training/reference data, for drift monitoring (pure numpy)
archive.py   write / read / verify / extract the deterministic zip
signing.py   Ed25519 keys and signatures (the optional ``cryptography`` package)

The format is documented in docs/bundle-format.md.
"""
