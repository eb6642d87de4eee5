"""The baseline data-mixing methods, one module each (a Mixer class and its parameters' dataclass).

tikmix.mixer.discover imports every module of this package: a new baseline is a module here and its
conf/mixer/<name>.yaml, with no list to edit.
"""
