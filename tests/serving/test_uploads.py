"""The upload store and its decoder without HTTP: quota and time-to-live, a full disk, bounded decoding,
metadata stripping and colour management (service/uploads.py, service/decode.py)."""
from __future__ import annotations

import contextlib
import errno
import io
import os
import struct
import threading
import time
from dataclasses import replace

import pytest
from PIL import Image, ImageCms, JpegImagePlugin, PngImagePlugin

from cir.paths import REPO_DIR
from cir.serving import uploads as uploads_module
from cir.serving.decode import decode_upload
from cir.serving.errors import BadInput, InsufficientStorage, NotFound, ServiceUnavailable, TooLarge
from cir.serving.settings import Settings
from cir.serving.uploads import UploadLimits, UploadStore, default_upload_dir
from cir.utils import atomic_write


def _jpeg(size=(64, 48), colour=(200, 30, 30), **save) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", **save)
    return buf.getvalue()


def _store(folder, encoder, **limits) -> UploadStore:
    return UploadStore(folder, encoder, UploadLimits(**limits), 16, contextlib.nullcontext)


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _age(store: UploadStore, uid: str, seconds: float) -> None:
    """Make an upload (all its files) look `seconds` old: ordering by mtime without sleeping."""
    t = time.time() - seconds
    for p in store.folder.glob(f"{uid}.*"):
        os.utime(p, (t, t))


# ----------------------------------------------------------------------------------------------- quota, TTL

def test_count_quota_evicts_the_oldest_with_their_features(tmp_path, lite_encoder):
    store = _store(tmp_path, lite_encoder, quota_count=3)
    uids = []
    for i in range(5):
        uids.append(store.add(_jpeg(colour=(40 * i, 10, 10))).id)
        _age(store, uids[-1], 100 - i)  # older first
    assert sorted(p.name.split(".")[0] for p in tmp_path.glob("*.jpg")) == sorted(uids[2:])
    assert len(list(tmp_path.glob("*.npy"))) == 3  # features went with their images
    for gone in uids[:2]:
        with pytest.raises(NotFound, match="does not exist"):
            store.features(gone)
    assert store.features(uids[-1]).shape == (1, lite_encoder.dim)


def test_byte_quota_keeps_the_folder_under_it(tmp_path, lite_encoder):
    store = _store(tmp_path, lite_encoder)
    _age(store, store.add(_jpeg((300, 300))).id, 200)
    one = sum(p.stat().st_size for p in tmp_path.iterdir())  # an upload as stored: JPEG and features
    store.limits = replace(store.limits, quota_bytes=int(2.5 * one))
    for i in range(6):
        uid = store.add(_jpeg((300, 300), colour=(i * 30, 200, 10))).id
        _age(store, uid, 100 - i)
        assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= store.limits.quota_bytes
    assert len(list(tmp_path.glob("*.jpg"))) == 2
    assert store.path(uid)  # the newest is kept


def test_time_to_live(tmp_path, lite_encoder):
    store = _store(tmp_path, lite_encoder, ttl_s=600)
    old, new = store.add(_jpeg()).id, store.add(_jpeg()).id
    _age(store, old, 601)
    with pytest.raises(NotFound, match="expired: uploads are kept 10 min"):
        store.path(old)
    assert not list(tmp_path.glob(f"{old}*"))  # deleted on access
    assert store.path(new).is_file()
    # A sweep deletes expired uploads and stale leftovers, and nothing that is not an upload's.
    other = store.add(_jpeg()).id
    _age(store, other, 700)
    stale_tmp = tmp_path / f".{'a' * 32}.jpg.x1y2.tmp"
    stale_tmp.write_bytes(b"half")
    os.utime(stale_tmp, (time.time() - 700,) * 2)
    (tmp_path / "README").write_text("not an upload")
    assert store.sweep() == 2
    assert _files(tmp_path) == sorted(["README", f"{new}.jpg", f"{new}.{store.tag}.raw.npy"])


def test_lookups_sweep_periodically(tmp_path, lite_encoder):
    store = _store(tmp_path, lite_encoder, ttl_s=60)
    a, b = store.add(_jpeg()).id, store.add(_jpeg()).id
    _age(store, a, 61)
    store._last_sweep -= store.sweep_every_s + 1  # the sweep interval has passed
    store.path(b)                                  # a lookup of another upload sweeps `a` away
    assert not list(tmp_path.glob(f"{a}*"))


def test_the_sweep_deletes_what_a_killed_worker_left(tmp_path, lite_encoder):
    """A worker SIGKILLed mid-upload leaves a JPEG without features under an id no client received (or
    features without their JPEG, or atomic_write's temporary file): the sweep deletes each once it is older
    than the grace period, and keeps younger ones (another worker may be writing them) and whole uploads."""
    store = _store(tmp_path, lite_encoder)
    assert store.limits.leftover_grace_s == 60
    whole = store.add(_jpeg()).id
    _age(store, whole, 120)  # past the grace period, but whole (and far from its time-to-live)

    def leftover(name: str, age: float) -> str:
        (tmp_path / name).write_bytes(b"left")
        os.utime(tmp_path / name, (time.time() - age,) * 2)
        return name
    gone = [leftover(f"{'1' * 32}.jpg", 61),                        # the orphan: its features never came
            leftover(f"{'2' * 32}.{store.tag}.raw.npy", 61),         # features whose JPEG was deleted
            leftover(f".{'3' * 32}.jpg.k1l2m3.tmp", 61),             # a JPEG never finished
            leftover(f".{whole}.{store.tag}.raw.npy.n4o5.tmp", 61)]  # a stale temporary file of a whole upload
    kept = [leftover(f"{'4' * 32}.jpg", 5),                          # being written: features next
            leftover(f"{'5' * 32}.jpg", 61),                         # an old JPEG whose features are
            leftover(f".{'5' * 32}.{store.tag}.raw.npy.p6q7.tmp", 1),  # being written right now
            leftover(f"{'6' * 32}.jpg", 61),                         # whole, with another encoder's features
            leftover(f"{'6' * 32}.0123456789ab.raw.npy", 61)]
    (tmp_path / "README").write_text("not an upload")
    assert store.sweep() == 3  # three leftover uploads; the temporary file beside `whole` is not one
    assert _files(tmp_path) == sorted([*kept, "README", f"{whole}.jpg", f"{whole}.{store.tag}.raw.npy"])
    assert not set(gone) & set(_files(tmp_path))
    assert store.features(whole).shape == (1, lite_encoder.dim)
    os.utime(tmp_path / kept[0], (time.time() - 61,) * 2)  # its writer died too: gone at the next sweep
    assert store.sweep() == 1 and kept[0] not in _files(tmp_path)


def test_the_default_folder_is_outside_the_source_tree(tmp_path):
    assert default_upload_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "cir-demo" / "uploads"
    home = default_upload_dir({})
    assert home == default_upload_dir({"XDG_CACHE_HOME": ""}) and REPO_DIR not in home.parents
    assert Settings().upload_dir == default_upload_dir()
    assert Settings.from_env({"CIR_UPLOAD_DIR": str(tmp_path)}).upload_dir == tmp_path


def test_the_limits_agree_and_come_from_the_settings(tmp_path):
    cfg = Settings.from_env({"CIR_UPLOAD_QUOTA_MB": "1.5", "CIR_UPLOAD_QUOTA_COUNT": "7",
                                         "CIR_UPLOAD_TTL_S": "90", "CIR_UPLOAD_DECODES": "3"})
    lim = UploadLimits.of(cfg)
    assert (lim.quota_bytes, lim.quota_count, lim.ttl_s, lim.decodes) == (int(1.5 * 2**20), 7, 90, 3)
    defaults = UploadLimits.of(Settings())
    assert defaults == UploadLimits.of(Settings(features_root=tmp_path, upload_dir=tmp_path)) == UploadLimits()
    assert defaults.max_pixels == 25_000_000 and defaults.ttl_s == 3600


# ----------------------------------------------------------------------------------------------- a full disk

def _failing_atomic_write(fail_on: str, err: int, calls: list):
    """atomic_write that, for the file whose name ends with `fail_on`, writes half and then fails like a full
    disk: the real atomic_write must clean up its temporary file."""
    @contextlib.contextmanager
    def fake(path, mode="wb"):
        with atomic_write(path, mode) as f:
            if str(path).endswith(fail_on):
                calls.append(path)
                real_write = f.write

                def write(data):
                    real_write(data[: len(data) // 2])
                    raise OSError(err, os.strerror(err))
                f.write = write
            yield f
    return fake


@pytest.mark.parametrize("fail_on", [".jpg", ".npy"])
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_507_and_leaves_nothing(tmp_path, lite_encoder, monkeypatch, fail_on, err):
    store = _store(tmp_path, lite_encoder)
    kept = store.add(_jpeg()).id
    before = _files(tmp_path)
    calls: list = []
    monkeypatch.setattr(uploads_module, "atomic_write", _failing_atomic_write(fail_on, err, calls))
    with pytest.raises(InsufficientStorage, match="no room for uploads") as e:
        store.add(_jpeg(colour=(1, 2, 3)))
    assert e.value.status == 507 and calls
    assert _files(tmp_path) == before  # no partial JPEG, .npy or temporary file
    assert store.path(kept).is_file()


def test_other_write_errors_are_not_hidden_but_clean_up(tmp_path, lite_encoder, monkeypatch):
    store = _store(tmp_path, lite_encoder)
    monkeypatch.setattr(uploads_module, "atomic_write", _failing_atomic_write(".npy", errno.EIO, []))
    with pytest.raises(OSError) as e:
        store.add(_jpeg())
    assert e.value.errno == errno.EIO and _files(tmp_path) == []


# ----------------------------------------------------------------------------------------------- decoding

def test_corrupt_and_oversized_images():
    def chunk(kind: bytes, data: bytes) -> bytes:
        import zlib
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header_only = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100, 100, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")
    assert len(header_only) == 45
    with pytest.raises(BadInput, match="corrupt or truncated"):
        decode_upload(header_only, 10**6, 1024)
    bomb = io.BytesIO()
    Image.new("1", (2500, 2000)).save(bomb, "PNG")   # 5 MP in a few kB
    with pytest.raises(TooLarge, match="5,000,000 pixels; the limit is 4,000,000"):
        decode_upload(bomb.getvalue(), 4_000_000, 1024)
    for bad in (b"", b"GIF89a" + b"\0" * 10, _jpeg()[:200]):
        with pytest.raises(BadInput):
            decode_upload(bad, 10**6, 1024)


def test_large_jpegs_are_decoded_at_reduced_size(monkeypatch):
    sizes = []
    real_load = JpegImagePlugin.JpegImageFile.load

    def load(self):
        sizes.append(self.size)  # the size the decoder works at, after draft()
        return real_load(self)
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", load)
    img, fmt = decode_upload(_jpeg((4400, 3300)), 25_000_000, 1024)
    assert fmt == "JPEG" and img.size == (1024, 768) and img.mode == "RGB"
    # DCT-scaled by 1/4 in the decoder (the largest scale that keeps 1024 px on the long side): never
    # 4400 x 3300 in memory. (Later load() calls are no-ops on the decoded image.)
    assert sizes[0] == (1100, 825)


def test_orientation_is_applied_on_every_path():
    im = Image.new("RGB", (2400, 1200), "red")
    im.paste((0, 0, 255), (0, 0, 100, 100))  # a blue corner, top left
    ex = im.getexif()
    ex[0x0112] = 6  # rotate 90 degrees clockwise to display
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        im.save(buf, fmt, exif=ex)
        out, _ = decode_upload(buf.getvalue(), 25_000_000, 1024)
        assert out.size == (512, 1024), fmt
        r, g, b = out.getpixel((out.width - 5, 5))  # the blue corner is now top right
        assert b > 200 and r < 60, (fmt, (r, g, b))


def test_the_icc_profile_is_applied_then_dropped():
    # A valid RGB profile with red and blue primaries swapped: its "red" is sRGB blue.
    p = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    n = struct.unpack(">I", p[128:132])[0]
    at = {bytes(p[132 + 12 * i:136 + 12 * i]): 132 + 12 * i for i in range(n)}
    r, b = at[b"rXYZ"], at[b"bXYZ"]
    p[r + 4:r + 12], p[b + 4:b + 12] = p[b + 4:b + 12], p[r + 4:r + 12]
    out, _ = decode_upload(_jpeg(colour=(255, 0, 0), icc_profile=bytes(p), quality=95), 10**6, 1024)
    red, green, blue = out.getpixel((10, 10))
    assert blue > 230 and red < 30 and "icc_profile" not in out.info


def _jpeg_markers(data: bytes) -> list[int]:
    """The marker bytes of a JPEG's segments up to the scan (APPn, COM, DQT, SOF, DHT, SOS)."""
    markers, i = [], 2
    while i < len(data) and data[i] == 0xFF:
        m = data[i + 1]
        markers.append(m)
        if m == 0xDA:  # start of scan: entropy-coded data follows
            break
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return markers


def _with_metadata() -> dict[str, bytes]:
    """The same picture as JPEG, PNG and GIF, each with every kind of metadata its format carries."""
    im = Image.new("RGB", (80, 60), (10, 120, 200))
    ex = im.getexif()
    ex[0x010E] = "secret-exif-description"
    ex[0x013B] = "secret-exif-artist"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">secret-xmp</x:xmpmeta>'
    out = {}
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=ex, icc_profile=icc, comment=b"secret-comment", xmp=xmp)
    out["JPEG"] = buf.getvalue()
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "secret-comment")
    info.add_itxt("XML:com.adobe.xmp", xmp.decode())
    buf = io.BytesIO()
    im.save(buf, "PNG", pnginfo=info, exif=ex, icc_profile=icc)
    out["PNG"] = buf.getvalue()
    buf = io.BytesIO()
    im.convert("P").save(buf, "GIF", comment=b"secret-comment")
    out["GIF"] = buf.getvalue()
    return out


def test_stored_uploads_carry_no_metadata(tmp_path, lite_encoder):
    store = _store(tmp_path, lite_encoder)
    for fmt, data in _with_metadata().items():
        assert b"secret-" in data, fmt  # the source does carry it
        res = store.add(data)
        stored = store.path(res.id).read_bytes()
        assert b"secret" not in stored, fmt
        # Only JFIF (APP0), quantisation, frame, Huffman tables, scan: no APP1 (EXIF, XMP), APP2 (ICC), COM.
        assert set(_jpeg_markers(stored)) <= {0xE0, 0xDB, 0xC0, 0xC4, 0xDA}, (fmt, _jpeg_markers(stored))
        with Image.open(io.BytesIO(stored)) as im:
            assert not im.getexif() and "icc_profile" not in im.info and "comment" not in im.info


# ----------------------------------------------------------------------------------------------- concurrency

def test_decodes_are_bounded_then_503(tmp_path, lite_encoder):
    store = _store(tmp_path, lite_encoder, decodes=1, decode_wait_s=0.05)
    assert store._decodes.acquire(timeout=1)  # another upload is being decoded
    try:
        with pytest.raises(ServiceUnavailable, match="busy decoding"):
            store.add(_jpeg())
    finally:
        store._decodes.release()
    assert store.add(_jpeg()).id  # free again
    # Waiting briefly is enough when the slot frees up meanwhile.
    store.limits = replace(store.limits, decode_wait_s=5)
    store._decodes.acquire()
    threading.Timer(0.1, store._decodes.release).start()
    assert store.add(_jpeg()).id
