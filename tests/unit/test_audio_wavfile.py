"""WAV files as microphone and speaker: decoding, conversion, real-time pacing, EOF silence."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import textwrap
import wave
from pathlib import Path

import numpy as np
import pytest

from appliance.audio import Microphone, Speaker
from appliance.audio.wavfile import WavInput, WavOutput, WavWriter, load_wav, read_wav
from appliance.errors import ConfigError

RATE = 24000


def ramp(count: int, start: int = 0) -> np.ndarray:
    return (np.arange(start, start + count) % 30000 + 1).astype(np.int16)


def pitch(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def write_wav(path: Path, frames: np.ndarray, rate: int, encoding: str) -> Path:
    """frames: float (-1..1), shape (n, channels). encoding: pcm8/16/24/32, float32/64, ext16."""
    channels = frames.shape[1]
    if encoding == "pcm8":
        data, tag, bits = (np.round(frames * 127) + 128).astype(np.uint8).tobytes(), 1, 8
    elif encoding in ("pcm16", "ext16"):
        data, tag, bits = (frames * 32767).astype("<i2").tobytes(), 1, 16
    elif encoding == "pcm24":
        ints = (frames * (2**23 - 1)).astype("<i4").reshape(-1)
        data = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
        tag, bits = 1, 24
    elif encoding == "pcm32":
        data, tag, bits = (frames * (2**31 - 1)).astype("<i4").tobytes(), 1, 32
    elif encoding == "float32":
        data, tag, bits = frames.astype("<f4").tobytes(), 3, 32
    else:
        data, tag, bits = frames.astype("<f8").tobytes(), 3, 64
    align = channels * bits // 8
    if encoding == "ext16":
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = (
            struct.pack(
                "<HHIIHHHHI", 0xFFFE, channels, rate, rate * align, align, bits, 22, bits, 3
            )
            + struct.pack("<H", 1)
            + guid_tail
        )
    else:
        fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"LIST" + struct.pack("<I", 4) + b"INFO"  # an extra chunk to skip
    chunks += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    return path


@pytest.mark.parametrize(
    "encoding", ["pcm8", "pcm16", "pcm24", "pcm32", "float32", "float64", "ext16"]
)
def test_reads_every_common_encoding_as_mono(tmp_path: Path, encoding: str) -> None:
    t = np.arange(4410) / 44100
    left = 0.5 * np.sin(2 * np.pi * 441 * t)
    frames = np.column_stack([left, left])
    mono, rate = read_wav(write_wav(tmp_path / "in.wav", frames, 44100, encoding))
    assert rate == 44100
    assert len(mono) == 4410
    tolerance = 0.01 if encoding == "pcm8" else 1e-4
    assert np.max(np.abs(mono - left)) < tolerance


def test_load_converts_rate_and_channels_keeping_the_pitch(tmp_path: Path) -> None:
    t = np.arange(44100) / 44100
    frames = np.column_stack([0.4 * np.sin(2 * np.pi * 500 * t), 0.4 * np.sin(2 * np.pi * 500 * t)])
    samples = load_wav(write_wav(tmp_path / "in.wav", frames, 44100, "pcm16"), 16000)
    assert samples.dtype == np.int16
    assert len(samples) == pytest.approx(16000, abs=2)
    assert pitch(samples, 16000) == pytest.approx(500, abs=1)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not a WAV file"),
        (b"RIFF\x04\x00\x00\x00WAVEdata\x00\x00\x00\x00", "no fmt chunk"),
        (None, "No such file"),
    ],
)
def test_an_unusable_mic_file_is_a_config_error_naming_the_option(
    tmp_path: Path, content: bytes | None, reason: str
) -> None:
    path = tmp_path / "mic.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_wav(path, RATE)
    problem = caught.value.problems[0]
    assert problem.variable == "--mic"
    assert reason in problem.reason


def test_unsupported_encodings_say_which(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "in.wav", np.zeros((10, 1)), 8000, "pcm16")
    data = bytearray(path.read_bytes())
    data[20:22] = struct.pack("<H", 2)  # ADPCM
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="unsupported encoding: 16-bit format tag 0x2"):
        load_wav(path, RATE)


def test_the_writer_keeps_a_valid_file_after_every_append(tmp_path: Path) -> None:
    path = tmp_path / "out.wav"
    writer = WavWriter(path, RATE)
    with wave.open(str(path)) as empty:
        assert empty.getnframes() == 0
    writer.append(ramp(100))
    writer.append(ramp(50, 100))
    with wave.open(str(path)) as partial:  # still open for writing
        assert (partial.getframerate(), partial.getnchannels(), partial.getsampwidth()) == (
            RATE,
            1,
            2,
        )
        assert list(np.frombuffer(partial.readframes(1000), "<i2")) == list(ramp(150))
    writer.close()
    writer.close()


def mono_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(samples.astype("<i2").tobytes())
    return path


async def capture(mic: Microphone, count: int, started_at: float) -> list[np.ndarray]:
    loop = asyncio.get_running_loop()
    chunks: list[np.ndarray] = []
    while sum(map(len, chunks)) < count:
        chunks.append(await asyncio.wait_for(mic.next_chunk(), 5))
        # never ahead of the clock
        assert sum(map(len, chunks)) <= (loop.time() - started_at) * RATE + 1
    return chunks


async def test_wav_mic_is_paced_and_advances_only_while_open(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    content = ramp(RATE)
    device = WavInput(mono_wav(tmp_path / "mic.wav", content), rate=RATE, period_ms=20, loop=loop)
    with Microphone(device, loop=loop, service_rate=RATE) as mic:
        mic.start()
        first = await capture(mic, 2400, loop.time())
        mic.stop()
        heard = np.concatenate([*first, mic.read()])
        await asyncio.sleep(0.1)  # closed for a while: the file must not advance meanwhile
        mic.start()
        second = await capture(mic, 2400, loop.time())
        mic.stop()
    heard = np.concatenate([heard, *second])
    assert list(heard) == list(content[: len(heard)])


async def test_wav_mic_is_silent_after_the_end_of_the_file(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    device = WavInput(
        mono_wav(tmp_path / "mic.wav", ramp(1200)), rate=RATE, period_ms=20, loop=loop
    )
    with Microphone(device, loop=loop, service_rate=RATE) as mic:
        mic.start()
        heard = np.concatenate(await capture(mic, 3600, loop.time()))
    assert list(heard[:1200]) == list(ramp(1200))
    assert not heard[1200:].any()
    assert device.finished


async def test_wav_mic_converts_to_the_service_rate(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    t = np.arange(48000) / 48000
    frames = np.column_stack([0.3 * np.sin(2 * np.pi * 300 * t)] * 2)
    path = write_wav(tmp_path / "mic.wav", frames, 48000, "float32")
    device = WavInput(path, rate=16000, period_ms=20, loop=loop)
    assert len(device.samples) == pytest.approx(16000, abs=2)
    assert pitch(device.samples, 16000) == pytest.approx(300, abs=1)


async def test_wav_speaker_records_answers_and_the_silence_between(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    path = tmp_path / "speaker.wav"
    device = WavOutput(path, period_ms=20, loop=loop)
    answer = ramp(2400)
    with Speaker(device, loop=loop, volume=100) as speaker:
        started = loop.time()
        speaker.start()
        speaker.play(answer, "item")
        speaker.finish()
        await asyncio.wait_for(speaker.drained.wait(), 5)
        elapsed = loop.time() - started
        assert device.frames_written <= elapsed * RATE + 1  # paced, not as fast as it can
        assert device.frames_written >= len(answer)
        with wave.open(str(path)) as partial:  # valid while still being written
            assert partial.getnframes() == device.frames_written
        speaker.play(answer, "again")
        speaker.finish()
        await asyncio.wait_for(speaker.drained.wait(), 5)
        speaker.stop()
        total = device.frames_written
    with wave.open(str(path)) as done:
        recorded = np.frombuffer(done.readframes(done.getnframes()), "<i2")
    assert len(recorded) == total
    first = int(np.flatnonzero(recorded)[0])
    assert list(recorded[first : first + 2400]) == list(answer)
    second = first + 2400 + int(np.flatnonzero(recorded[first + 2400 :])[0])
    assert list(recorded[second : second + 2400]) == list(answer)


def test_a_speaker_file_that_cannot_be_written_is_a_config_error_naming_the_option(
    tmp_path: Path,
) -> None:
    loop = asyncio.new_event_loop()
    try:
        for path, reason in (
            (tmp_path / "no-such-dir" / "speaker.wav", "No such file or directory"),
            (Path("/dev/full"), "No space left on device"),  # the disk is full from the start
        ):
            with pytest.raises(ConfigError) as caught:
                WavOutput(path, period_ms=20, loop=loop)
            problem = caught.value.problems[0]
            assert problem.variable == "--speaker"
            assert reason in problem.reason
    finally:
        loop.close()


async def test_a_speaker_file_whose_disk_fills_fails_the_stream_and_says_so(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    device = WavOutput(small_disk / "speaker.wav", period_ms=20, loop=loop)
    with Speaker(device, loop=loop) as speaker:
        failed = asyncio.Event()
        speaker.on_failure = failed.set
        speaker.start()
        await asyncio.wait_for(failed.wait(), 10)
        failure = speaker.status().failure
        assert failure is not None
        assert f"WAV speaker {str(small_disk / 'speaker.wav')!r}" in failure
        assert "No space left on device" in failure
        assert device.frames_written > 0  # it played until the disk was full
        speaker.stop()  # the stop after a failure neither raises nor reports it again
    assert f"the end of {small_disk / 'speaker.wav'} could not be written" in caplog.text


def test_wav_speaker_file_survives_the_process_being_killed(tmp_path: Path) -> None:
    path = tmp_path / "speaker.wav"
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        import numpy as np
        from pathlib import Path
        from appliance.audio import Speaker
        from appliance.audio.wavfile import WavOutput

        async def main():
            loop = asyncio.get_running_loop()
            speaker = Speaker(WavOutput(Path({str(path)!r}), period_ms=20, loop=loop),
                              loop=loop, volume=100)
            speaker.start()
            speaker.play(np.full(4800, 1000, dtype=np.int16), "item")
            speaker.finish()
            await speaker.drained.wait()
            print("played", flush=True)
            await asyncio.Event().wait()

        asyncio.run(main())
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "played"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
    with wave.open(str(path)) as killed:
        recorded = np.frombuffer(killed.readframes(killed.getnframes()), "<i2")
    assert np.count_nonzero(recorded == 1000) == 4800
