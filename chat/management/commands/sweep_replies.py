import asyncio
import signal

from django.core.management.base import BaseCommand

from chat.sweeper import sweep


class Command(BaseCommand):
    help = "Mark replies left `streaming` by a worker that died (status error, partial text kept)."

    def add_arguments(self, parser):
        parser.add_argument("--loop", type=float, default=0, help="Repeat every this many seconds until stopped.")

    def handle(self, *args, loop: float, **options):
        asyncio.run(self._run(loop))

    async def _run(self, interval: float) -> None:
        stop = asyncio.Event()
        if interval:
            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        while True:
            marked = await sweep()
            self.stdout.write(f"marked {marked} interrupted replies")
            if not interval:
                return
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
                return
            except TimeoutError:
                continue
