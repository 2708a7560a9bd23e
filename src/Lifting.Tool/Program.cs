// The `lifting` .NET tool: the host's commands (src/Lifting.Host/Cli.cs), with the host's Ctrl-C handling.
using Lifting.Host;

// Ctrl-C asks the run to stop at the next mini-batch boundary (it saves a checkpoint and a summary
// with status interrupted and exits 130); a second Ctrl-C ends the process at once.
using var interrupt = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) =>
{
    if (interrupt.IsCancellationRequested) return;
    e.Cancel = true;
    interrupt.Cancel();
};
return Cli.Run(args, Console.Out, Console.Error, interrupt.Token, live: true);
