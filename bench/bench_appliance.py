"""The whole appliance: latencies, CPU and memory of ``appliance --simulate``.

The appliance runs as its own process on real PyAudio over a private PulseAudio server
with null devices (tests/fixtures/pulse.py), talking to ``appliance emulator`` in another
process, so only the appliance's own work is measured. The microphone hears turns fed
into the mic sink in real time; the figures come from the appliance's own log lines
(the same values it sends to journald as APPLIANCE_*_MS fields) and from /proc.

A second, shorter conversation runs with the low-power setting the README describes
(``APPLIANCE_CHUNK_MS=100``, ``APPLIANCE_PERIOD_MS=100``) for its CPU and latency cost, and
a third with the buffer sizes of the SDK's own sample assistant (50 ms periods for the
microphone and the speaker), so that its CPU can be compared with the sample's at equal
wake-up rates, and a fourth with the microphone's 40 ms chunks kept while it hears no one
(``APPLIANCE_QUIET_CHUNK_MS=0``), for what the longer quiet chunks save.

The null sinks are kept awake by ``parec`` readers asking for BENCH_KEEPALIVE_MS (40, the
appliance's own microphone period): a null sink hands its recorders a fragment as often as
its most demanding reader asks, and a 10 ms reader would wake the appliance's microphone
four times a period, which a real microphone does not do (see tests/fixtures/pulse.py).

Knobs: BENCH_IDLE_S (30), BENCH_SILENT_S (30), BENCH_TALK_S (300), BENCH_TURNS (200),
BENCH_PTT_TURNS (12), BENCH_LOW_POWER_TURNS (15), BENCH_SAMPLE_SIZES_TURNS (15),
BENCH_SHORT_CHUNKS_TURNS (15), BENCH_KEEPALIVE_MS (40).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.report import median, percentile, table
from tests.fixtures.pulse import PulseServer

RATE = 24000
IDLE_S = float(os.environ.get("BENCH_IDLE_S", "30"))
SILENT_S = float(os.environ.get("BENCH_SILENT_S", "30"))
TALK_S = float(os.environ.get("BENCH_TALK_S", "300"))
TURNS = int(os.environ.get("BENCH_TURNS", "200"))
PTT_TURNS = int(os.environ.get("BENCH_PTT_TURNS", "12"))
LOW_POWER_TURNS = int(os.environ.get("BENCH_LOW_POWER_TURNS", "15"))
KEEPALIVE_MS = int(os.environ.get("BENCH_KEEPALIVE_MS", "40"))
LOW_POWER = {"APPLIANCE_CHUNK_MS": "100", "APPLIANCE_PERIOD_MS": "100"}
SAMPLE_SIZES_TURNS = int(os.environ.get("BENCH_SAMPLE_SIZES_TURNS", "15"))
SAMPLE_SIZES = {"APPLIANCE_CHUNK_MS": "50", "APPLIANCE_PERIOD_MS": "50"}
SHORT_CHUNKS_TURNS = int(os.environ.get("BENCH_SHORT_CHUNKS_TURNS", "15"))
SHORT_CHUNKS = {"APPLIANCE_QUIET_CHUNK_MS": "0"}
APPLIANCE = Path(sys.executable).with_name("appliance")
TICK_S = os.sysconf("SC_CLK_TCK")
KEY = "bench-key-0123456789abcdef"


def tone(seconds: float, frequency: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    samples: np.ndarray = np.rint(8000 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)
    return samples


def quiet(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


class Process:
    """A child process with its stdout lines and stderr log lines collected by threads."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.out: list[str] = []
        self.log: list[str] = []
        self._changed = threading.Condition()
        for stream, lines in ((self.popen.stdout, self.out), (self.popen.stderr, self.log)):
            threading.Thread(target=self._collect, args=(stream, lines), daemon=True).start()

    def _collect(self, stream: object, lines: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_line(self, pattern: str, *, after: int = 0, timeout: float = 30) -> int:
        """Index of the first stdout line from ``after`` on that matches."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(after, len(self.out)):
                    if regex.search(self.out[index]):
                        return index
                left = deadline - time.monotonic()
                if left <= 0 or self.popen.poll() is not None:
                    raise RuntimeError(
                        f"no {pattern!r} in:\n"
                        + "\n".join(self.out[-20:])
                        + "\n"
                        + "\n".join(self.log[-20:])
                    )
                self._changed.wait(left)

    def send(self, command: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(command + "\n")
        self.popen.stdin.flush()

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK_S

    def memory_mib(self, field: str) -> float:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise KeyError(field)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(timeout=30)


@contextmanager
def cpu_percent(process: Process, into: dict[str, float], name: str) -> Iterator[None]:
    cpu, wall = process.cpu_s(), time.monotonic()
    yield
    into[name] = (process.cpu_s() - cpu) / (time.monotonic() - wall) * 100


def figures(log: list[str], pattern: str) -> list[float]:
    regex = re.compile(pattern)
    return [float(m.group(1)) for line in log if (m := regex.search(line))]


def emulator(env: dict[str, str]) -> tuple[Process, str]:
    process = Process([str(APPLIANCE), "emulator", "--port", "0"], env)
    line = process.out[process.wait_line(r"listening on (http://\S+)")]
    match = re.search(r"(http://\S+)", line)
    assert match
    return process, match.group(1)


def appliance(pulse: PulseServer, url: str, **extra: str) -> Process:
    env = {
        **{
            k: v
            for k, v in pulse.client_env().items()
            if not k.startswith(("APPLIANCE_", "AZURE_"))
        },
        "AZURE_VOICELIVE_ENDPOINT": url,
        "APPLIANCE_AUTH": "api_key",
        "AZURE_VOICELIVE_API_KEY": KEY,
        "APPLIANCE_IDLE_TIMEOUT_S": "3600",
        "APPLIANCE_LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    process = Process([str(APPLIANCE), "--simulate"], env)
    process.wait_line("state idle")
    return process


@dataclass
class Talk:
    cpu: dict[str, float]
    peak_mib: float
    rss_turn_20: float
    rss_last: float
    turns: int
    answers: list[float]
    delta: list[float]
    barge: list[float]


def conversation(
    pulse: PulseServer,
    url: str,
    *,
    turns_wanted: int = TURNS,
    idle_s: float = IDLE_S,
    **extra: str,
) -> Talk:
    """Toggle mode: idle, connected and silent, then ``turns_wanted`` turns with interruptions."""
    app = appliance(pulse, url, **extra)
    cpu: dict[str, float] = {}
    try:
        time.sleep(3)  # start-up settles (imports, PortAudio)
        if idle_s:
            with cpu_percent(app, cpu, "idle, no conversation"):
                time.sleep(idle_s)
        app.send("click")
        app.wait_line("state listening")
        time.sleep(2)
        with cpu_percent(app, cpu, "connected, listening to silence"):
            time.sleep(SILENT_S)

        # Turns of 1 s speech and 3 s for the answer; every 5th is talked over by speech
        # 0.7 s into the answer, every 7th interrupted by a press.
        turns, started = 0, app.wait_line("state listening")
        rss_early = rss_late = 0.0
        talk_cpu_start, talk_wall = app.cpu_s(), time.monotonic()
        talk_cpu, talk_s = 0.0, 1.0
        while turns < turns_wanted:
            turns += 1
            barge = turns % 5 == 0
            speech = [tone(1.0, 200 + 10 * (turns % 20)), quiet(1.2 if barge else 3.0)]
            if barge:
                speech += [tone(0.6, 300), quiet(2.6)]
            feeder = threading.Thread(target=pulse.feed_mic, args=(np.concatenate(speech),))
            feeder.start()
            if turns % 7 == 0:
                started = app.wait_line("state responding", after=started + 1)
                time.sleep(0.3)
                app.send("click")
            feeder.join()
            if time.monotonic() - talk_wall <= TALK_S:
                talk_cpu = app.cpu_s() - talk_cpu_start
                talk_s = time.monotonic() - talk_wall
            if turns == 20:
                rss_early = app.memory_mib("VmRSS")
            started = len(app.out) - 1
        rss_late = app.memory_mib("VmRSS")
        cpu[f"talking: {min(TALK_S, talk_s):.0f} s of turns"] = talk_cpu / talk_s * 100
        peak = app.memory_mib("VmHWM")
        app.send("quit")
        app.popen.wait(timeout=30)
    finally:
        app.stop()
    return Talk(
        cpu=cpu,
        peak_mib=peak,
        rss_turn_20=rss_early,
        rss_last=rss_late,
        turns=turns,
        answers=figures(app.log, r"answer heard ([\d.]+) ms after the end of speech"),
        delta=figures(app.log, r"first audio delta to speaker ([\d.]+) ms"),
        barge=figures(app.log, r"speaker silent ([\d.]+) ms after the interruption"),
    )


def push_to_talk(pulse: PulseServer, url: str) -> dict[str, list[float]]:
    """Press -> first audio sent, with the connection cold (first press) and warm."""
    app = appliance(pulse, url, APPLIANCE_BUTTON_MODE="push_to_talk", APPLIANCE_IDLE_TIMEOUT_S="5")
    cold: list[float] = []
    warm: list[float] = []
    try:
        seen = 0
        for turn in range(PTT_TURNS):
            if turn % 3 == 0 and turn:
                time.sleep(6)  # the idle timeout ends the conversation: the next press is cold
            feeder = threading.Thread(target=pulse.feed_mic, args=(tone(0.8, 250),))
            app.send("press")
            feeder.start()
            feeder.join()
            app.send("release")
            app.wait_line("state idle", after=app.wait_line("state responding", after=seen))
            seen = len(app.out)
        app.send("quit")
        app.popen.wait(timeout=30)
    finally:
        app.stop()
    transition = ""
    for line in app.log:
        if "idle -> connecting on press" in line:
            transition = "cold"
        elif "idle -> listening on press" in line:
            transition = "warm"
        elif m := re.search(r"first audio sent ([\d.]+) ms after the press", line):
            (cold if transition == "cold" else warm).append(float(m.group(1)))
    return {"cold": cold, "warm": warm}


def stats(values: list[float]) -> list[object]:
    if not values:
        return ["-", "-", 0]
    return [median(values), percentile(values, 0.95), len(values)]


def lean_alsa_config(root: Path) -> Path:
    """An ALSA configuration without the codec and JACK plugin PCMs of libasound2-plugins.

    PortAudio opens every PCM the ALSA configuration defines while it lists devices; the
    plugins Debian's pulseaudio package pulls in load libavcodec, x265, rav1e and more
    (about 14 MiB). A device without PulseAudio has none of them; this variant measures
    the appliance as it would be there, with the same PulseAudio devices.
    """
    conf_d = root / "alsa.conf.d"
    conf_d.mkdir()
    for name in ("50-pulseaudio.conf", "99-pulse.conf"):
        source = Path("/etc/alsa/conf.d") / name
        if source.exists():
            (conf_d / name).write_text(source.read_text())
    alsa_conf = Path("/usr/share/alsa/alsa.conf").read_text()
    path = root / "alsa.conf"
    path.write_text(alsa_conf.replace('"/etc/alsa/conf.d"', f'"{conf_d}"'))
    return path


def main() -> None:
    with (
        tempfile.TemporaryDirectory() as root,
        PulseServer(Path(root), record=False, keepalive_ms=KEEPALIVE_MS) as pulse,
    ):
        service, url = emulator(pulse.client_env())
        try:
            talk = conversation(pulse, url)
            low = conversation(pulse, url, turns_wanted=LOW_POWER_TURNS, idle_s=0, **LOW_POWER)
            sample_sizes = conversation(
                pulse, url, turns_wanted=SAMPLE_SIZES_TURNS, idle_s=0, **SAMPLE_SIZES
            )
            short_chunks = conversation(
                pulse, url, turns_wanted=SHORT_CHUNKS_TURNS, idle_s=0, **SHORT_CHUNKS
            )
            press = push_to_talk(pulse, url)
            lean = lean_memory(pulse, url, lean_alsa_config(Path(root)))
        finally:
            service.stop()
    table(
        "Appliance latencies (ms; from its own journal figures)",
        ["figure", "median", "p95", "n"],
        [
            [
                "answer audio delta at the socket -> first sample to the output callback",
                *stats(talk.delta),
            ],
            ["end of user speech (speech_stopped) -> answer at the speaker", *stats(talk.answers)],
            ["barge-in (speech_started or press) -> output callback silent", *stats(talk.barge)],
            ["  the same with the low-power setting (100 ms periods)", *stats(low.barge)],
            ["press -> first mic audio sent, connection cold", *stats(press["cold"])],
            ["press -> first mic audio sent, connection warm", *stats(press["warm"])],
        ],
    )
    table(
        "Appliance CPU (% of one core, whole process incl. PortAudio threads; "
        f"null sinks kept awake at {KEEPALIVE_MS} ms)",
        ["phase", "CPU %"],
        [[name, value] for name, value in talk.cpu.items()]
        + [[f"low power: {name}", value] for name, value in low.cpu.items()]
        + [
            [f"the SDK sample's 50 ms buffers: {name}", value]
            for name, value in sample_sizes.cpu.items()
        ]
        + [
            [f"40 ms chunks even while quiet: {name}", value]
            for name, value in short_chunks.cpu.items()
        ],
    )
    table(
        "Appliance memory (MiB)",
        ["figure", "MiB"],
        [
            ["peak RSS (VmHWM) over the whole run", talk.peak_mib],
            ["RSS after turn 20", talk.rss_turn_20],
            [f"RSS after turn {talk.turns}", talk.rss_last],
            ["growth from turn 20 to the last", talk.rss_last - talk.rss_turn_20],
            ["peak RSS, ALSA without libasound2-plugins' codec PCMs (as on a Pi)", lean],
        ],
    )


def lean_memory(pulse: PulseServer, url: str, alsa_config: Path) -> float:
    """Peak RSS through a short conversation with the lean ALSA configuration."""
    app = appliance(pulse, url, ALSA_CONFIG_PATH=str(alsa_config))
    try:
        app.send("click")
        app.wait_line("state listening")
        pulse.feed_mic(np.concatenate([tone(1.0, 220), quiet(3.0)] * 3))
        return app.memory_mib("VmHWM")
    finally:
        app.stop()


if __name__ == "__main__":
    main()
