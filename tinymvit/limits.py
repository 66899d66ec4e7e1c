"""The caps that keep memory bounded whatever a checkpoint or an image asks for.

Every value here is checked BEFORE the memory it would cost is allocated, and a value
over a cap is an error naming the cap (``ConfigError``, ``ImageError`` or ``InputError``).
They are module attributes so that an application that really needs more can raise
them, e.g. ``tinymvit.limits.MAX_IMAGE_PIXELS = 200_000_000``.
"""

#: Largest side (pixels) a config may ask for: ``image_size``, the preprocessor's
#: ``size`` / ``crop_size``, ``segment(size=N)``; also the cap on ASPP ``atrous_rates``.
MAX_SIDE = 8192

#: Largest image (width x height) that is decoded, or that the resize step may produce
#: (e.g. the shortest-edge rule applied to a 1 x 100000 strip).  8192 x 8192 = 64 Mpx,
#: i.e. 192 MiB of RGB.
MAX_IMAGE_PIXELS = MAX_SIDE * MAX_SIDE

#: Most classes a checkpoint may have (``num_labels`` / ``id2label``).
MAX_LABELS = 100_000

#: Most channels any layer may have (widths from the config, ``aspp_out_channels``...).
MAX_CHANNELS = 65_536

#: Largest value of a multiplier or ratio (``width_multiplier``, ``expand_ratio``,
#: ``mlp_ratio``...): far above any published model, low enough that no width overflows.
MAX_RATIO = 1000

#: Largest ``conv_kernel_size`` (odd; every published checkpoint uses 3).
MAX_KERNEL = 63

#: Most attention blocks per MobileViTV2 stage (``n_attn_blocks``).
MAX_BLOCKS = 256

#: Largest ``config.json`` / ``preprocessor_config.json`` read, in bytes.
MAX_JSON_BYTES = 64 * 2**20

#: Largest total size of the intermediate tensors of one forward pass (the sum over
#: every tensor the graph produces, before buffer reuse; the buffers actually allocated
#: are about a quarter of it).  A bigger input is refused before anything is allocated;
#: classify() and segment() make their batches smaller to stay below it.  MobileViTV2
#: at 256x256 totals 71 MiB per image, DeepLabV3-MobileViTV2 at 512x512 289 MiB.
MAX_ACTIVATION_BYTES = 8 * 2**30


def gib(nbytes):
    """``nbytes`` as a short human-readable string ('1.5 GiB', '12 MiB')."""
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.1f} GiB"
    return f"{nbytes / 2**20:.0f} MiB"
