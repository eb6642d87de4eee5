from baselines import aioli  # noqa: F401
from baselines import odm  # noqa: F401
from baselines import dga  # noqa: F401
from baselines import regmix  # noqa: F401
from baselines import doremi  # noqa: F401
