"""A stand-in for SimpleITK on the GPU machine of scripts/gpu-check.sh (its wheel, 53 MB, does not fit the 64 MiB that
travels there). nnU-Net imports SimpleITK at module level in paths that training runs through (the reader/writer
registry, the preprocessor); the check's dataset is preprocessed with NibabelIO (dataset.json's
overwrite_image_reader_writer), so nothing calls it. Importing works; any use raises, loudly, naming the attribute.
"""

__version__ = "0+gpu-check-stub"


class SimpleITKStubUsed(RuntimeError):
    pass


def __getattr__(name: str) -> object:
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    raise SimpleITKStubUsed(f"SimpleITK.{name} used, but this is scripts/gpu-check.sh's stand-in "
                            "(bench/gpu/stub/SimpleITK): the path that called it needs the real SimpleITK")
