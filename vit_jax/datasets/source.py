"""What every dataset gives the input pipeline: its examples by index.

`example_fn(index)` (a TensorFlow function of an int64 scalar) returns (image, label, ok):
the image is uint8 [h, w, c], or, for `channels` not None, the encoded file (JPEG or PNG
bytes) to be decoded with that many channels, so a random crop can decode only its window.
`ok` is None, or a bool tensor that is False for an undecodable image folder file. `listing`
is the image folder's file listing (None for TFDS datasets).
"""

import collections

Source = collections.namedtuple('Source', 'example_fn n num_classes listing channels')
