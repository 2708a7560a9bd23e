using System.Globalization;
using Lifting.Training;
using Spectre.Console;

namespace Lifting.Host;

/// How a run reports while it trains: live bars on a terminal, plain lines otherwise.
public abstract class Progress
{
    /// Live bars (Spectre.Console, on standard error) when standard error is a terminal, the
    /// caller did not ask for plain output, and no CI is running; plain lines on `output` otherwise.
    /// `epochLines` off: no line per epoch (a sweep prints one line per run).
    public static Progress Create(TextWriter output, bool live, bool epochLines = true) =>
        live && !Console.IsErrorRedirected && Environment.GetEnvironmentVariable("CI") is null or "" or "false"
            ? new Live(output, epochLines) : new Plain(output, epochLines);

    /// Runs `body` with the display active.
    public abstract T Run<T>(Func<T> body);
    public abstract void Start(string title, int epochs, int batchesPerEpoch, int completedEpochs);
    public abstract void Batch(int epoch, int batch, int batchesPerEpoch);
    public abstract void Epoch(EpochMetrics metrics, int epochs);
    /// A line of text (above the bars when they are live).
    public abstract void Line(string text);

    public static string FormatEpoch(EpochMetrics m, int epochs)
    {
        var line = string.Create(CultureInfo.InvariantCulture,
            $"epoch {m.Epoch,3}/{epochs}  train loss {m.TrainLoss:F4}  objective {m.Objective:G4} (loss term {m.LossTerm:G4})  val acc {Show(m.ValidationAccuracy)}  test acc {m.TestAccuracy:F4}  {m.Seconds:F2} s");
        if (m.Defects.Count > 0) line += $"  defect {string.Join("/", m.Defects.Select(d => Cli.Sci(d)))}";
        if (m.MultiplierNorms.Count > 0) line += $"  |λ|² {string.Join("/", m.MultiplierNorms.Select(d => Cli.Sci(d)))}";
        if (m.CosineToBackprop is { } c) line += string.Create(CultureInfo.InvariantCulture, $"  cos {c:F3}");
        foreach (var (k, v) in m.Diagnostics) line += string.Create(CultureInfo.InvariantCulture, $"  {k} {v:G4}");
        if (m.Held.Count > 0) line += $"  (settling: {string.Join(", ", m.Held)} held)";
        return line;
    }

    public static string Show(double? accuracy) => accuracy is { } a ? a.ToString("F4", CultureInfo.InvariantCulture) : "–";

    private sealed class Plain : Progress
    {
        private readonly TextWriter output;
        private readonly bool epochLines;
        public Plain(TextWriter output, bool epochLines) { this.output = output; this.epochLines = epochLines; }
        public override T Run<T>(Func<T> body) => body();
        public override void Start(string title, int epochs, int batchesPerEpoch, int completedEpochs) { }
        public override void Batch(int epoch, int batch, int batchesPerEpoch) { }
        public override void Epoch(EpochMetrics metrics, int epochs)
        {
            if (epochLines) output.WriteLine(FormatEpoch(metrics, epochs));
        }
        public override void Line(string text) => output.WriteLine(text);
    }

    /// Two bars, epochs and the current epoch's mini-batches, each with its ETA; the epoch bar's
    /// label carries the last epoch's loss, validation accuracy and defect.
    private sealed class Live : Progress
    {
        private readonly IAnsiConsole console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        private readonly TextWriter output;
        private ProgressContext? context;
        private ProgressTask? epochTask, batchTask;
        private string title = "";
        private int batchEpoch;

        private readonly bool epochLines;

        public Live(TextWriter output, bool epochLines)
        {
            this.output = output;
            this.epochLines = epochLines;
        }

        public override T Run<T>(Func<T> body)
        {
            T result = default!;
            console.Progress()
                .AutoClear(true)
                .HideCompleted(true)
                .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(),
                         new RemainingTimeColumn(), new SpinnerColumn())
                .Start(ctx =>
                {
                    context = ctx;
                    try { result = body(); }
                    finally { context = null; }
                });
            return result;
        }

        public override void Start(string title, int epochs, int batchesPerEpoch, int completedEpochs)
        {
            this.title = Markup.Escape(title);
            if (context is null) return;
            epochTask = context.AddTask($"{this.title}: epochs", maxValue: epochs);
            epochTask.Value = completedEpochs;
        }

        public override void Batch(int epoch, int batch, int batchesPerEpoch)
        {
            if (context is null) return;
            if (batchTask is null || epoch != batchEpoch)
            {
                // One bar per epoch: its ETA is the epoch's; the finished one is hidden.
                if (batchTask is not null) { batchTask.Value = batchTask.MaxValue; batchTask.StopTask(); }
                batchTask = context.AddTask($"epoch {epoch}", maxValue: batchesPerEpoch);
                batchEpoch = epoch;
            }
            batchTask.Value = batch;
            batchTask.Description = $"epoch {epoch}: mini-batch {batch}/{batchesPerEpoch}";
        }

        public override void Epoch(EpochMetrics m, int epochs)
        {
            // A short line: a line wider than the terminal would break the bars' redraw (the full
            // record is in metrics.jsonl).
            if (epochLines) console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"epoch {m.Epoch,3}/{epochs}  train loss {m.TrainLoss:F4}  val acc {Show(m.ValidationAccuracy)}  test acc {m.TestAccuracy:F4}{(m.Defects.Count > 0 ? $"  defect {Cli.Sci(m.MeanDefect)}" : "")}  {m.Seconds:F2} s{(m.Held.Count > 0 ? "  (settling)" : "")}"), Style.Plain);
            if (epochTask is null) return;
            epochTask.Value = m.Epoch;
            var defect = m.Defects.Count > 0 ? string.Create(CultureInfo.InvariantCulture, $" defect {Cli.Sci(m.MeanDefect, 1)}") : "";
            epochTask.Description = Markup.Escape(string.Create(CultureInfo.InvariantCulture,
                $"{title}: epoch {m.Epoch}/{epochs} loss {m.TrainLoss:F3} val {Show(m.ValidationAccuracy)}{defect}"));
        }

        public override void Line(string text)
        {
            if (context is null) output.WriteLine(text);
            else console.WriteLine(text, Style.Plain);
        }
    }
}
