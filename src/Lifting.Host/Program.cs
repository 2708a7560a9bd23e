using System.Runtime.InteropServices;
using Lifting.Host;

// Ctrl-C (SIGINT) and SIGTERM (a scheduler's preemption, `kill`) ask the run to stop at the next
// mini-batch boundary: it saves a checkpoint and a summary with status interrupted and exits 130.
// A second signal ends the process at once.
using var interrupt = new CancellationTokenSource();
void Stop(PosixSignalContext context)
{
    if (interrupt.IsCancellationRequested) return;
    context.Cancel = true;
    interrupt.Cancel();
}
using var onInterrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);
using var onTerminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
return Cli.Run(args, Console.Out, Console.Error, interrupt.Token, live: true);
