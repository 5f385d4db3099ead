"""normlab's config schemas in Hydra's ConfigStore, for every Hydra app over conf/.

Hydra imports every module of the hydra_plugins namespace package when it first looks for
plugins, before it composes a config, so the schemas that conf/ files name in their defaults
lists (`/<group>_<option>_schema`, conf/train.yaml's `train_schema`) are stored whichever way
the config is composed: train.py, Hydra's compose API in tests and scripts, notebooks.
"""

from normlab.config.resolvers import register_resolvers
from normlab.config.schemas import register_schemas

register_schemas()
register_resolvers()  # ${normlab_precision:...} in conf/scale/cifar.yaml, ${normlab_uid:}
