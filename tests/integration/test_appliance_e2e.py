"""The appliance as a user runs it: ``appliance --simulate`` in a subprocess, stdin commands
for the button, WAV files for the microphone and the speaker, the emulator in this process.

Assertions are on what a person would notice and on what the service saw: the answer in
the speaker file, the speaker going silent on an interruption, the emulator's record of
events (a truncate with the audio actually played), and the LED pin's history.
"""

from __future__ import annotations

import asyncio
import base64
import os
import pty
import random
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.emulator import ConnectionRecord, Emulator
from tests.fixtures.appliance import (
    RATE,
    ApplianceProcess,
    Launcher,
    common_prefix,
    find,
    led_segments,
    quiet,
    read_wav,
    tone,
    write_wav,
)
from tests.fixtures.emulator import MakeEmulator
from tests.fixtures.pulse import PulseServer

pytestmark = pytest.mark.slow

PERIOD_SAMPLES = RATE * 20 // 1000  # one audio period at the default 20 ms


def answers(emulator: Emulator, connection: int = 0) -> list[np.ndarray]:
    """The audio of every response the emulator sent on a connection, in order."""
    record = emulator.connections[connection]
    ids = [event["response"]["id"] for event in record.sent_of("response.created")]
    return [np.frombuffer(record.audio_sent(rid), dtype="<i2") for rid in ids]


def appended_chunks(record: ConnectionRecord) -> list[tuple[int, int]]:
    """Each ``input_audio_buffer.append``'s first sample (since the connection's first) and size."""
    chunks, position = [], 0
    for event in record.received_of("input_audio_buffer.append"):
        samples = len(base64.b64decode(event["audio"])) // 2
        chunks.append((position, samples))
        position += samples
    return chunks


def played_prefix(speaker: np.ndarray, answer: np.ndarray) -> tuple[int, int]:
    """Where the answer starts in the speaker file, and how many of its samples were played."""
    sound = int(np.flatnonzero(answer)[0])  # answers start with the silence before speech
    found = find(speaker, answer[sound : sound + PERIOD_SAMPLES])
    assert found >= 0, "the answer's first sound is not in the speaker file"
    start = found - sound
    return start, common_prefix(speaker[start:], answer)


async def test_toggle_conversation_of_two_turns(
    tmp_path: Path, emulator: Emulator, launch: Launcher
) -> None:
    mic = write_wav(
        tmp_path / "mic.wav", quiet(300), tone(1200, 220), quiet(2600), tone(1000, 330), quiet(8000)
    )
    # Connecting lasts a few blinks (session.created and session.updated come 0.15 s late),
    # however fast the machine: a connection made within one blink would show none.
    handshake = emulator.faults.next_connection().delay_events(0.15)
    app = await launch(emulator.url, mic)
    await app.expect("state idle")
    await app.send("click")
    await app.expect("state connecting")
    await app.expect("state listening")
    handshake.delay_events(0)
    await app.expect("state responding")
    await app.expect("assistant: I heard")
    await app.expect("state listening")
    await app.expect("state responding")
    await app.expect("state listening")
    await app.send("click")  # a press while listening ends the conversation
    await app.expect("state idle")
    assert await app.quit() == 0

    record = emulator.connections[0]
    assert record.sent_types().count("response.done") == 2
    assert record.close_code == 1000
    # Once the service ended the first turn, the silence after it went in quiet chunks
    # (200 ms) at once, not in short ones for the 1.5 s the microphone waits otherwise.
    end_ms = record.sent_of("input_audio_buffer.speech_stopped")[0]["audio_end_ms"]
    after_the_turn = [
        samples
        for start, samples in appended_chunks(record)
        if end_ms + 600 <= start * 1000 // RATE <= end_ms + 1400
    ]
    assert after_the_turn, "the microphone streamed after the turn"
    assert min(after_the_turn) >= RATE * 200 // 1000
    speaker = app.speaker()
    for answer in answers(emulator):
        _, played = played_prefix(speaker, answer)
        assert played == len(answer), "the whole answer was played, sample for sample"
    # The LED: fast blink while connecting, on while listening, pulsing while answering.
    segments = led_segments(app.led_history())
    levels = [s.level for s in segments]
    assert 1.0 in levels
    assert any(0.0 < level < 1.0 for level in levels), "the answer pulses the LED (PWM)"
    blinks = [s for s in segments if s.level == 1.0 and 0.05 < s.seconds < 0.2]
    assert blinks, "connecting blinks fast"
    assert max(s.seconds for s in segments if s.level == 1.0) > 1.0, "listening is steady on"
    assert levels[-1] == 0.0, "off again when idle"


async def test_push_to_talk_turn(tmp_path: Path, emulator: Emulator, launch: Launcher) -> None:
    mic = write_wav(tmp_path / "mic.wav", quiet(200), tone(1500, 250), quiet(8000))
    app = await launch(emulator.url, mic, env={"APPLIANCE_BUTTON_MODE": "push_to_talk"})
    await app.expect("state idle")
    await app.send("press")
    await app.expect("state listening")
    record = await emulator.wait_for_connection(1)
    # Hold until the whole tone has reached the service, as a person holds while talking.
    await emulator.wait_until(lambda: len(record.audio_received()) >= 1.8 * RATE * 2, timeout=15)
    await app.send("release")
    await app.expect("state responding")
    await app.expect("state idle")  # push-to-talk rests in idle between turns
    assert await app.quit() == 0

    received = record.received_types()
    assert "input_audio_buffer.commit" in received
    assert received.index("input_audio_buffer.commit") < received.index("response.create")
    assert "input_audio_buffer.speech_started" not in record.sent_types()
    session = record.received_of("session.update")[0]["session"]
    assert session["turn_detection"] is None
    (answer,) = answers(emulator)
    _, played = played_prefix(app.speaker(), answer)
    assert played == len(answer)


@pytest.mark.parametrize(
    ("audio_speed", "status"),
    # At 2x the answer is still being sent when the second tone starts (and arrives ahead of
    # playback, as from the real service, so the speaker file holds it without gaps).
    [(8.0, "completed"), (2.0, "cancelled")],
    ids=["answer-already-sent", "answer-still-streaming"],
)
async def test_barge_in_by_speech_truncates_to_what_was_played(
    audio_speed: float,
    status: str,
    tmp_path: Path,
    make_emulator: MakeEmulator,
    launch: Launcher,
) -> None:
    """Talking over the answer silences it; the service hears how much of it was played.

    Whether the service was still sending the answer (it then ends it itself, reason
    turn_detected) or had sent all of it (only the device was still playing it), the device
    never sends response.cancel for speech: the service does that for it.
    """
    emulator = await make_emulator(audio_speed=audio_speed)
    # The second tone starts while the answer to the first is playing.
    mic = write_wav(
        tmp_path / "mic.wav", quiet(300), tone(1500, 220), quiet(1100), tone(1200, 330), quiet(8000)
    )
    app = await launch(emulator.url, mic)
    await app.send("click")
    await app.expect("state responding")
    await app.expect("state listening")  # talked over: listening again at once
    record = emulator.connections[0]
    await emulator.wait_for_received("conversation.item.truncate", timeout=10)
    await app.expect("state responding")  # the answer to the interruption
    await app.expect("state listening")
    assert await app.quit() == 0

    first = answers(emulator)[0]
    done = record.sent_of("response.done")[0]["response"]
    assert done["status"] == status
    if status == "cancelled":
        assert done["status_details"]["reason"] == "turn_detected"
    assert "response.cancel" not in record.received_types()
    assert not record.sent_of("error")
    (truncation,) = record.truncations
    speaker = app.speaker()
    start, played = played_prefix(speaker, first)
    assert 0 < played < len(first)
    assert abs(truncation.audio_end_ms * RATE // 1000 - played) <= PERIOD_SAMPLES
    # Silent right after the cut, until the next answer.
    after = speaker[start + played : start + played + RATE // 5]
    assert not after.any(), "the speaker goes silent right after the interruption"


async def test_barge_in_by_button_cancels_the_active_response(
    tmp_path: Path, make_emulator: MakeEmulator, launch: Launcher
) -> None:
    emulator = await make_emulator(audio_speed=2.0)  # the answer is still being generated
    mic = write_wav(tmp_path / "mic.wav", quiet(300), tone(1500, 220), quiet(12000))
    app = await launch(emulator.url, mic)
    await app.send("click")
    await app.expect("state responding")
    record = emulator.connections[0]
    await emulator.wait_for_event("response.audio.delta", count=10, timeout=10)
    await app.send("click")  # a press while responding interrupts
    await app.expect("state listening")
    await emulator.wait_for_received("conversation.item.truncate", timeout=10)
    await emulator.wait_for_event("response.done", timeout=10)
    assert await app.quit() == 0

    assert "response.cancel" in record.received_types()
    done = record.sent_of("response.done")[0]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"]["reason"] == "client_cancelled"
    assert not record.sent_of("error"), "nothing the appliance sent was refused"
    (truncation,) = record.truncations
    speaker = app.speaker()
    start, played = played_prefix(speaker, answers(emulator)[0])
    assert abs(truncation.audio_end_ms * RATE // 1000 - played) <= PERIOD_SAMPLES
    assert not speaker[start + played :].any(), "nothing of the answer after the press"


async def test_dropped_connection_mid_answer_recovers_with_the_conversation(
    tmp_path: Path, make_emulator: MakeEmulator, launch: Launcher
) -> None:
    emulator = await make_emulator(audio_speed=1.0)
    emulator.faults.next_connection().drop(after_events=16)  # a few audio deltas in
    # The first reconnection fails too, so the offline pattern shows long enough to count.
    emulator.faults.for_connection(2).close(1011, after_events=1)
    mic = write_wav(tmp_path / "mic.wav", quiet(300), tone(1500, 220), quiet(15000))
    app = await launch(emulator.url, mic)
    await app.send("click")
    await app.expect("state responding")
    await app.expect("state error  led error_offline")
    await app.expect("state connecting", timeout=10)
    await app.expect("state listening")
    second = await emulator.wait_for_connection(3)
    await emulator.wait_for_received("conversation.item.create", connection=3, timeout=10)
    assert await app.quit() == 0

    restored = [event["item"] for event in second.received_of("conversation.item.create")]
    roles = [item.get("role") for item in restored]
    assert "user" in roles, restored
    assert any("seconds of speech" in str(item) for item in restored), restored
    # The LED showed the offline pattern: two short blinks, then a pause.
    segments = led_segments(app.led_history())
    runs = [(s.level, round(s.seconds, 2)) for s in segments]
    offline = [
        i
        for i in range(len(segments) - 3)
        if segments[i].level == 1.0
        and 0.1 <= segments[i].seconds <= 0.3
        and segments[i + 1].level == 0.0
        and 0.15 <= segments[i + 1].seconds <= 0.4
        and segments[i + 2].level == 1.0
        and 0.1 <= segments[i + 2].seconds <= 0.3
    ]
    assert offline, f"no offline blink pattern in {runs}"


async def _reach(app: ApplianceProcess, state: str) -> None:
    await app.expect("state idle")
    if state != "idle":
        await app.send("click")
        await app.expect(f"state {state}")


@pytest.mark.parametrize("state", ["idle", "connecting", "listening", "responding", "error"])
async def test_sigterm_exits_0_quickly_in_every_state(
    state: str, tmp_path: Path, make_emulator: MakeEmulator, launch: Launcher
) -> None:
    emulator = await make_emulator(audio_speed=0.5)  # answers outlast the test
    if state == "connecting":
        emulator.faults.next_connection().delay_events(30)  # session.updated never comes
    if state == "error":
        emulator.faults.refuse_handshakes(503, times=1000)
    mic = write_wav(tmp_path / "mic.wav", quiet(300), tone(1200, 220), quiet(20000))
    app = await launch(emulator.url, mic)
    await _reach(app, state)
    started = time.monotonic()
    app.terminate()
    assert await app.wait(timeout=10) == 0
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"took {elapsed:.2f} s to stop from {state}"
    assert app.speaker_path.exists()


@pytest.mark.parametrize("mode", ["toggle", "push_to_talk"])
async def test_button_chatter_never_leaves_the_device_stuck(
    mode: str, tmp_path: Path, emulator: Emulator, launch: Launcher
) -> None:
    rng = random.Random(7)
    mic = write_wav(tmp_path / "mic.wav", quiet(200), tone(800, 220), quiet(60000))
    app = await launch(
        emulator.url, mic, env={"APPLIANCE_BUTTON_MODE": mode, "APPLIANCE_HOLD_S": "0.5"}
    )
    await app.expect("state idle")
    chatter = [
        rng.choice(["press", "release", "press", "release", "hold 0.01"]) for _ in range(300)
    ]
    await app.send(*chatter, "release")
    # Whatever the chatter did, the button still works: in toggle a long press ends the
    # conversation, in push-to-talk a press is heard and a release sends the turn.
    if mode == "toggle":
        await app.send("hold 0.8")
        await app.expect("state idle", timeout=30)
        await app.send("click")
        await app.expect("state listening", timeout=30)
    else:
        await app.send("press")
        await app.expect("state listening", timeout=30)
        await app.send("release")
        await app.expect("state (responding|idle)", timeout=30)
    assert await app.quit() == 0
    # Nothing the device sent was refused (a cancel racing the answer's own end aside).
    refused = [e["error"]["code"] for r in emulator.connections for e in r.sent_of("error")]
    assert set(refused) <= {"response_cancel_not_active"}, refused


async def test_stdin_end_is_not_quit(tmp_path: Path, emulator: Emulator, launch: Launcher) -> None:
    """Under systemd stdin is /dev/null: the appliance keeps running until told to stop."""
    mic = write_wav(tmp_path / "mic.wav", quiet(1000))
    app = await launch(emulator.url, mic)
    await app.expect("state idle")
    assert app.process.stdin is not None
    app.process.stdin.close()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await app.process.wait()
    app.terminate()
    assert await app.wait() == 0


async def test_silence_ends_the_conversation_after_the_idle_timeout(
    tmp_path: Path, emulator: Emulator, launch: Launcher
) -> None:
    mic = write_wav(tmp_path / "mic.wav", quiet(60000))
    app = await launch(emulator.url, mic, env={"APPLIANCE_IDLE_TIMEOUT_S": "5"})
    await app.send("click")
    await app.expect("state listening")
    started = time.monotonic()
    await app.expect("state idle", timeout=20)
    assert time.monotonic() - started >= 4.5  # not before the timeout
    await emulator.connections[0].wait_closed()
    assert emulator.connections[0].closed_by == "client"
    assert await app.quit() == 0


async def test_half_duplex_mutes_the_mic_while_the_device_speaks(
    tmp_path: Path, emulator: Emulator, launch: Launcher
) -> None:
    # The second tone comes while the answer plays: with the mic muted it interrupts nothing.
    mic = write_wav(
        tmp_path / "mic.wav", quiet(300), tone(1500, 220), quiet(1100), tone(600, 330), quiet(8000)
    )
    app = await launch(emulator.url, mic, env={"APPLIANCE_HALF_DUPLEX": "true"})
    await app.send("click")
    await app.expect("state responding")
    await app.expect("state listening")
    assert await app.quit() == 0

    record = emulator.connections[0]
    assert not record.truncations, "nothing was interrupted"
    assert "input_audio_buffer.speech_started" in record.sent_types()
    assert record.sent_types().count("input_audio_buffer.speech_started") == 1
    (answer,) = answers(emulator)
    _, played = played_prefix(app.speaker(), answer)
    assert played == len(answer), "the whole answer was played"


async def test_the_model_can_end_the_conversation_after_its_goodbye(
    tmp_path: Path, emulator: Emulator, launch: Launcher
) -> None:
    from appliance.emulator import FunctionCall, Script, Speech

    goodbye = tone(800, 440)
    emulator.responder = Script(
        FunctionCall("end_conversation"),
        Speech(goodbye.astype("<i2").tobytes(), "Goodbye!"),
    )
    mic = write_wav(tmp_path / "mic.wav", quiet(300), tone(1000, 220), quiet(10000))
    app = await launch(emulator.url, mic)
    await app.send("click")
    await app.expect("assistant: Goodbye!")
    await app.expect("state idle")
    assert await app.quit() == 0

    record = emulator.connections[0]
    outputs = [e["item"] for e in record.received_of("conversation.item.create")]
    assert outputs[0]["type"] == "function_call_output"
    start = find(app.speaker(), goodbye[:PERIOD_SAMPLES])
    assert start >= 0
    assert common_prefix(app.speaker()[start:], goodbye) == len(goodbye), (
        "the goodbye was played to the end before hanging up"
    )
    assert record.close_code == 1000


async def test_a_press_in_error_retries_at_once(
    tmp_path: Path, make_emulator: MakeEmulator, launch: Launcher
) -> None:
    emulator = await make_emulator()
    emulator.faults.refuse_handshakes(401, times=1)  # auth refused: backoff goes to the cap
    mic = write_wav(tmp_path / "mic.wav", quiet(20000))
    app = await launch(emulator.url, mic)
    await app.send("click")
    await app.expect("state error  led error_auth")
    started = time.monotonic()
    await app.send("click")  # the next try would be 30 s away; a press tries now
    await app.expect("state listening")
    assert time.monotonic() - started < 10
    assert await app.quit() == 0


async def test_a_sound_server_that_hangs_shows_the_device_error_and_audio_comes_back(
    tmp_path: Path, emulator: Emulator, launch: Launcher
) -> None:
    """On the sound card (real PyAudio on a private PulseAudio), the server stops answering
    mid-conversation: the streams fall silent without an error, and closing them hangs."""
    with PulseServer(tmp_path / "pulse") as server:
        app = await launch(emulator.url, None, env=server.env)

        def audio_heard() -> int:
            return sum(len(record.audio_received()) for record in emulator.connections)

        await app.send("click")
        await app.expect("state listening")
        await emulator.wait_until(audio_heard, timeout=15)
        with server.hung():
            await app.expect("state error  led error_device", timeout=30)
            stalled = audio_heard()
            await app.expect_log("audio device still failing", count=2, timeout=30)
        # Once it answers again, the retries get the microphone back without a press.
        await app.expect("state listening", timeout=30)
        await emulator.wait_until(lambda: audio_heard() > stalled + RATE, timeout=30)
        await app.expect_log("audio device works again after")  # once it kept running
        assert await app.quit() == 0
        # The failed retries never showed "listening", not even for a moment.
        states = app.states()
        assert states[states.index("error") :] == ["error", "listening"], states
        log = (app.workdir / "stderr.log").read_text(errors="replace")
        assert "audio device failed: input device 'default': no audio callback" in log
        assert "closing an audio stream did not return within 1 s" in log  # stuck: not 5


async def test_a_failed_speaker_keeps_the_device_error_until_it_opens_again(
    tmp_path: Path, emulator: Emulator, launch: Launcher
) -> None:
    """The microphone (a file) works; the speaker's sound server hangs before the answer. The
    retries, which try both devices, show nothing until the speaker opens again."""
    mic = write_wav(tmp_path / "mic.wav", quiet(2500), tone(1500, 300), quiet(20000))
    with PulseServer(tmp_path / "pulse") as server:
        env = {**server.env, "APPLIANCE_EARCONS": "true"}
        app = await launch(emulator.url, mic, env=env, card_speaker=True)
        await app.send("click")
        await app.expect("state listening")
        await app.expect_log("release ignored in listening")  # the click is over
        with server.hung():
            # The user's turn ends; the speaker cannot start for the answer.
            await app.expect("state error  led error_device", timeout=30)
            await app.expect_log("audio device still failing", count=2, timeout=30)
        await app.expect("state listening", timeout=30)
        assert await app.quit() == 0
    # The failed retries never showed "listening", not even for a moment.
    assert app.states() == ["idle", "connecting", "listening", "error", "listening"]
    log = (app.workdir / "stderr.log").read_text(errors="replace")
    assert log.count("audio device failed") == 1  # then at DEBUG until it works


async def test_a_speaker_that_fails_right_after_each_start_is_one_outage(
    tmp_path: Path, emulator: Emulator, launch: Launcher, small_disk: Path
) -> None:
    """The speaker's file is on a disk that fills during the first answer: from then on it
    starts, and fails at its first write. Each retry succeeds for a moment; the outage goes
    on, logged once at WARNING, with its backoff growing, and never said to be over."""
    mic = write_wav(tmp_path / "mic.wav", quiet(2500), tone(1500, 300), quiet(60000))
    speaker = small_disk / "speaker.wav"
    app = await launch(emulator.url, mic, args=["--speaker", str(speaker)])
    await app.send("click")
    await app.expect("state error  led error_device", timeout=30)
    await app.expect_log("audio device unavailable (device); retrying in", count=4, timeout=60)
    assert await app.quit() == 0
    log = (app.workdir / "stderr.log").read_text(errors="replace")
    assert f"audio device failed: WAV speaker {str(speaker)!r}: No space left on device" in log
    assert log.count("audio device failed") == 1  # then "still failing", at DEBUG
    assert "works again" not in log
    attempts = re.findall(
        r"audio device unavailable \(device\); retrying in .* \(attempt (\d+)\)", log
    )
    assert [int(n) for n in attempts[:4]] == [1, 2, 3, 4]  # one outage: never back to 1


async def test_a_speaker_that_stalls_while_the_microphone_is_closed_is_reported(
    tmp_path: Path, emulator: Emulator, launch: Launcher
) -> None:
    """Push-to-talk: once the button is up, only the answer streams. The sound server stops
    mid-answer; the stalled speaker is reported (not left "responding" until a press), and
    the next turn is heard once the server answers again."""
    mic = write_wav(tmp_path / "mic.wav", quiet(200), tone(4000, 300), quiet(60000))
    with PulseServer(tmp_path / "pulse") as server:
        env = {**server.env, "APPLIANCE_BUTTON_MODE": "push_to_talk"}
        app = await launch(emulator.url, mic, env=env, card_speaker=True)
        await app.expect("state idle")
        await app.send("press")
        await app.expect("state listening")
        record = await emulator.wait_for_connection(1)
        spoken = 4.3 * RATE * 2  # bytes: the whole tone
        await emulator.wait_until(lambda: len(record.audio_received()) >= spoken, timeout=15)
        await app.send("release")
        await app.expect("state responding")
        # Until the answer's sound reaches the sink: the speaker is mid-answer (4 s of it).
        speaker = server.recording
        heard_from = speaker.position
        async with asyncio.timeout(10):
            while not np.any(speaker.samples(heard_from, speaker.position)):
                await speaker.until(speaker.position + RATE // 10)
        with server.hung():
            await app.expect("state error  led error_device", timeout=30)
        await app.expect("state idle", timeout=30)  # the retry: nothing streams between turns
        log = app.workdir / "stderr.log"
        if "did not return" in log.read_text(errors="replace"):  # a close was given up on
            await app.expect_log("the sound server answers again")  # and has returned since
        sent = len(record.audio_received())
        await app.send("press")
        await app.expect("state listening")
        await emulator.wait_until(lambda: len(record.audio_received()) >= sent + RATE, timeout=15)
        await app.send("release")
        await app.expect("state responding")
        await app.expect("state idle", timeout=30)  # the second answer played to its end
        assert await app.quit() == 0
    assert "audio device failed: output device 'default': no audio callback" in log.read_text(
        errors="replace"
    )


async def test_without_endpoint_or_sound_card_it_uses_the_emulator_and_the_sample(
    tmp_path: Path,
) -> None:
    """`appliance --simulate` on a bare machine: the built-in emulator, the bundled spoken
    sample as the microphone, a WAV file as the speaker; a click gets an answer."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PULSE_", "APPLIANCE_", "AZURE_"))
    }
    # No sound server and no card: ALSA's devices fail to open.
    env.update(
        {"PULSE_SERVER": "unix:/nonexistent", "APPLIANCE_EARCONS": "false", "PYTHONUNBUFFERED": "1"}
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "appliance",
        "--simulate",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
        cwd=tmp_path,
    )
    app = ApplianceProcess(process, tmp_path)
    await app.expect("built-in Voice Live emulator")
    await app.expect("the mic is the bundled sample")
    speaker_line = await app.expect("what the device says goes to")
    await app.expect("state idle")
    await app.send("click")
    await app.expect("user: ", timeout=30)
    await app.expect("assistant: I heard", timeout=30)
    await app.expect("state listening", timeout=30)
    assert await app.quit() == 0
    speaker = Path(speaker_line.rsplit(" ", 1)[1])
    assert speaker.parent == tmp_path
    assert read_wav(speaker).any(), "the answer is in it"


async def test_a_key_press_on_a_terminal_is_the_button(tmp_path: Path, emulator: Emulator) -> None:
    mic = write_wav(tmp_path / "mic.wav", quiet(20000))
    controller, terminal = pty.openpty()
    env = {
        **os.environ,
        "AZURE_VOICELIVE_ENDPOINT": emulator.url,
        "APPLIANCE_AUTH": "api_key",
        "AZURE_VOICELIVE_API_KEY": "terminal-test-key-0123",
        "PYTHONUNBUFFERED": "1",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "appliance",
        "--simulate",
        "--mic",
        str(mic),
        "--speaker",
        str(tmp_path / "out.wav"),
        stdin=terminal,
        stdout=terminal,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    os.close(terminal)
    screen = bytearray()
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def readable() -> None:
        try:
            screen.extend(os.read(controller, 65536))
        except OSError:
            loop.remove_reader(controller)
        changed.set()

    async def shown(text: str) -> None:
        async with asyncio.timeout(20):
            while text.encode() not in screen:
                changed.clear()
                await changed.wait()

    loop.add_reader(controller, readable)
    try:
        await shown("space = button")
        await shown("idle")
        os.write(controller, b" ")  # a key press: click
        await shown("listening")
        await emulator.wait_for_connection(1)
        os.write(controller, b"q")
        async with asyncio.timeout(20):
            assert await process.wait() == 0
    finally:
        loop.remove_reader(controller)
        os.close(controller)
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_reload_changes_the_button_mode_at_the_next_conversation(
    tmp_path: Path, emulator: Emulator, launch: Launcher
) -> None:
    # One long tone: the service's VAD never hears the end of it, so only a push-to-talk
    # release can get an answer.
    mic = write_wav(tmp_path / "mic.wav", quiet(200), tone(30000, 220))
    env_file = tmp_path / "appliance.env"
    env_file.write_text("APPLIANCE_BUTTON_MODE=toggle\n")
    app = await launch(emulator.url, mic, args=["--env-file", str(env_file)])
    await app.expect("state idle")
    env_file.write_text("APPLIANCE_BUTTON_MODE=push_to_talk\n")
    app.process.send_signal(signal.SIGHUP)
    await app.expect("the new configuration is in effect")
    await app.send("press")
    await app.expect("state listening")
    record = await emulator.wait_for_connection(1)
    await emulator.wait_until(lambda: len(record.audio_received()) >= RATE * 2, timeout=15)
    await app.send("release")
    await app.expect("state responding")
    assert await app.quit() == 0
    assert record.received_of("session.update")[0]["session"]["turn_detection"] is None
    assert "configuration reloaded; changed: APPLIANCE_BUTTON_MODE" in app.log()
