"""Model builders: each appends one architecture to a GraphBuilder, reading like its table."""
from . import mobilenet_v2, mobilevit, mobilevitv2

BUILDERS = {
    "mobilevitv2": mobilevitv2.build,
    "mobilevit": mobilevit.build,
    "mobilenet_v2": mobilenet_v2.build,
}

_PREFIX = {"mobilevitv2": "mobilevitv2.", "mobilevit": "mobilevit.",
           "mobilenet_v2": "mobilenet_v2."}


def backbone_prefix(family):
    """The name prefix of backbone tensors in checkpoints that have a head."""
    return _PREFIX[family]
