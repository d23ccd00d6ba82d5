"""The verification code drawn as an image and spoken as audio (the ``captcha`` library).

Drawing takes a few tens of milliseconds and speaking a few hundred, all CPU: both run in a
worker thread so the event loop keeps serving, and at most :data:`MAX_RENDERS` at once so a
burst of requests cannot take every core from the policy server sharing this machine.
"""

from __future__ import annotations

import asyncio

from captcha.audio import AudioCaptcha
from captcha.image import ImageCaptcha

# One render per core of a small server; more would only queue in the thread pool anyway.
MAX_RENDERS = 2
# Wide enough for five digits to stay readable after the library's distortion.
IMAGE_WIDTH, IMAGE_HEIGHT = 220, 80


class CaptchaRenderer:
    """Draws and speaks codes; built once and shared."""

    def __init__(self) -> None:
        self._image = ImageCaptcha(width=IMAGE_WIDTH, height=IMAGE_HEIGHT)
        self._audio = AudioCaptcha()
        self._slots = asyncio.Semaphore(MAX_RENDERS)

    async def png(self, code: str) -> bytes:
        """The code as a PNG image."""
        async with self._slots:
            data = await asyncio.to_thread(self._image.generate, code, "png")
        return data.getvalue()

    async def wav(self, code: str) -> bytes:
        """The code spoken, digit by digit, as a WAV file."""
        async with self._slots:
            data = await asyncio.to_thread(self._audio.generate, code)
        return bytes(data)
