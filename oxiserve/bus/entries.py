"""How a topic's frames are laid out in Redis, and rebuilt from it on another replica.

Per topic generation (a run's leg, a background response), under ``oxi:{<job id>}:<gen>:``
(one hash tag: a Redis Cluster keeps a job's keys on one shard):

* ``s``, a stream: one entry per published batch, its id ``<the seq after it>-0`` (so reading
  after cursor ``c`` is ``XREAD ... c-0``); a field per frame, ``c<seq>`` for a control frame,
  ``t<seq>:<key>:<text>`` for a text frame; ``end`` in the last entry.  Trimmed ``MAXLEN ~``;
* ``t<key>``: the key's whole text (APPEND per batch), ``l<key>``: each text frame's sequence
  number and the text length after it (int64 pairs), ``c``: every control frame with the text
  lengths before it.  What the trimmed stream lost is rebuilt from these, exactly, as the
  in-process ``RecoveryLog`` does for a reader its ring overran;
* ``h``, a hash: ``i<key>`` the id behind a text key (a message or output item id),
  ``base`` (the first frame of the generation), ``kind``.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

import orjson

__all__ = [
    "END",
    "Batch",
    "Snapshot",
    "control_field",
    "decode_control",
    "encode_control",
    "entry_frames",
    "entry_ids",
    "text_field",
]

END = b"end"
Frame = tuple[int, int, str, bytes]  # (seq, key (-1: control), text, frame)


def control_field(seq: int) -> bytes:
    return b"c%d" % seq


def text_field(seq: int, key: int, text: str) -> bytes:
    return b"t%d:%d:%b" % (seq, key, text.encode())


def entry_frames(fields: dict[bytes, bytes]) -> list[Frame]:
    """The frames of one stream entry, in order (``end`` is not one)."""
    frames: list[Frame] = []
    for name, frame in fields.items():
        if name[:1] == b"c":
            frames.append((int(name[1:]), -1, "", frame))
        elif name[:1] == b"t":
            seq, key, text = name[1:].split(b":", 2)
            frames.append((int(seq), int(key), text.decode(), frame))
    return frames


def entry_ids(fields: dict[bytes, bytes]) -> dict[int, str]:
    """The ids of the text keys an entry starts (``k<key>`` fields)."""
    return {int(name[1:]): value.decode() for name, value in fields.items() if name[:1] == b"k"}


def encode_control(seq: int, lengths: dict[int, int], frame: bytes) -> bytes:
    return b"%d %b " % (seq, orjson.dumps(lengths, option=orjson.OPT_NON_STR_KEYS)) + frame


def decode_control(packed: bytes) -> tuple[int, bytes, dict[int, int]]:
    seq, lengths, frame = packed.split(b" ", 2)
    return int(seq), frame, {int(k): v for k, v in orjson.loads(lengths).items()}


@dataclass(slots=True)
class Batch:
    """What one flush of a topic adds: its frames, and per key the text and layout added."""

    frames: list[Frame] = field(default_factory=list)
    texts: dict[int, list[str]] = field(default_factory=dict)
    layout: dict[int, array[int]] = field(default_factory=dict)
    controls: list[bytes] = field(default_factory=list)

    def add(self, seq: int, key: int, text: str, frame: bytes, lengths: dict[int, int]) -> None:
        self.frames.append((seq, key, text, frame))
        if key < 0:
            self.controls.append(encode_control(seq, lengths, frame))
            return
        self.texts.setdefault(key, []).append(text)
        self.layout.setdefault(key, array("q")).extend((seq, lengths[key]))

    def fields(self) -> dict[bytes, bytes]:
        return {control_field(s) if k < 0 else text_field(s, k, t): f
                for s, k, t, f in self.frames}  # fmt: skip


@dataclass(slots=True)
class Snapshot:
    """A generation as Redis holds it, turned into what rebuilds its topic elsewhere: the
    first frame the stream still has (``base``), the text and controls before it, the text
    frames' layout per key, and the frames from ``base`` on."""

    base: int
    texts: dict[int, str]
    controls: list[tuple[int, bytes, dict[int, int]]]
    layout: dict[int, list[tuple[int, int]]]  # key -> [(seq, length after)], every text frame
    ids: dict[int, str]
    frames: list[Frame]
    last_id: bytes  # the stream entry to read after
    ended: bool
    kind: str

    @classmethod
    def decode(cls, reply: list[object]) -> Snapshot:
        """From the snapshot script's reply: [hash fields, entries, controls, [key, text,
        layout, ...]]."""
        pairs, entries, packed, per_key = reply
        assert isinstance(pairs, list)
        assert isinstance(entries, list)
        assert isinstance(packed, list)
        assert isinstance(per_key, list)
        meta = dict(zip(pairs[::2], pairs[1::2], strict=True))
        frames: list[Frame] = []
        ended, last_id, base = False, b"0-0", int(meta.get(b"base", b"0"))
        for index, (entry_id, flat) in enumerate(entries):
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            got = entry_frames(fields)
            for key, item_id in entry_ids(fields).items():
                meta.setdefault(b"i%d" % key, item_id.encode())
            if index == 0:
                base = int(entry_id.split(b"-")[0]) - len(got)
            frames += got
            ended = ended or END in fields
            last_id = entry_id
        controls = [c for c in map(decode_control, packed) if c[0] < base]
        texts: dict[int, str] = {}
        layout: dict[int, list[tuple[int, int]]] = {}
        for at in range(0, len(per_key), 3):
            key = int(per_key[at])
            pairs_q = array("q")
            pairs_q.frombytes(per_key[at + 2] or b"")
            layout[key] = list(zip(pairs_q[::2], pairs_q[1::2], strict=True))
            before = [end for seq, end in layout[key] if seq < base]
            texts[key] = (per_key[at + 1] or b"").decode()[: before[-1] if before else 0]
        ids = {int(k[1:]): v.decode() for k, v in meta.items() if k[:1] == b"i"}
        kind = meta.get(b"kind", b"").decode()
        return cls(base, texts, controls, layout, ids, frames, last_id, ended, kind)
