using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Lifting.Storage;
using Lifting.Training;

namespace Lifting.Host;

/// What a run on several processes changes in `Runner.Execute`: the formulation and solver the
/// trainer runs (the data-parallel ones), and calls when the folder exists and when the run ends.
public sealed record RunHooks
{
    public Lifting.Formulations.IFormulation? Formulation { get; init; }
    public Lifting.Solvers.ISolver? Solver { get; init; }
    public Action<RunFolder>? Started { get; init; }
    public Action? Ended { get; init; }
}

/// How a run ended, with its exit code: 0 completed, 130 interrupted (Ctrl-C), 3 diverged, 1 failed.
public sealed record RunOutcome(string Status, int ExitCode, JsonObject Summary, IReadOnlyList<EpochMetrics> History, TimeSpan Wall)
{
    public const string Running = "running";
    public const string Completed = "completed";
    public const string Interrupted = "interrupted";
    public const string Diverged = "diverged";
    public const string Failed = "failed";
}

/// Trains a prepared run into its folder: the folder is created (and config.json written) only
/// when the trainer has lifted the problem, i.e. once every input has proved usable; from then
/// on every epoch appends its metrics and replaces the checkpoint, and however the run ends its
/// summary says so (completed, interrupted, diverged, failed) and its plots are drawn.
public static class Runner
{
    public static RunOutcome Execute(PreparedRun run, RunFolder folder, Progress progress, CancellationToken cancellation, Checkpoint? resume = null, string? title = null,
        int logEvery = TensorBoardLog.DefaultLogEvery, RunHooks? hooks = null)
    {
        TensorBoardLog? events = null;
        var history = new List<EpochMetrics>(resume?.State.History ?? Array.Empty<EpochMetrics>());
        bool started = false;
        var wall = System.Diagnostics.Stopwatch.StartNew();
        var epochs = run.Options.Epochs;
        var observer = new Observer
        {
            Start = (_, batches) =>
            {
                if (resume is null)
                {
                    folder.Create();
                    folder.WriteJson(RunFolder.Config, run.Config());
                }
                // Extended (resume --epochs N): the config plans the new count.
                else if (resume.State.Epochs != run.Options.Epochs) folder.WriteJson(RunFolder.Config, run.Config());
                folder.ResetMetrics(history.Select(MetricsLine));
                events = TensorBoardLog.Open(folder.Path, logEvery, progress.Line);
                events?.Start(batches);
                folder.WriteJson(RunFolder.Summary, Summary(run, RunOutcome.Running, null, history, null));
                started = true;
                hooks?.Started?.Invoke(folder);
                progress.Start(title ?? run.Method.Name, epochs, batches, resume?.State.CompletedEpochs ?? 0);
            },
            Batch = (epoch, batch, batches, loss, objective) =>
            {
                progress.Batch(epoch, batch, batches);
                events?.Batch(epoch, batch, loss, objective);
            },
            Epoch = m =>
            {
                history.Add(m);
                folder.AppendMetrics(MetricsLine(m));
                events?.Epoch(m);
                progress.Epoch(m, epochs);
            },
        };
        var control = new TrainingControl
        {
            Cancellation = cancellation,
            OnCheckpoint = snapshot =>
            {
                folder.SaveCheckpoint(snapshot);
                events?.Weights(snapshot);
            },
            ResumeFrom = resume,
        };
        try
        {
            using var result = progress.Run(() => Trainer.Train(run.Program, run.Data, hooks?.Formulation ?? run.Method.Formulation, hooks?.Solver ?? run.Method.Solver,
                run.Method.StepRules, run.Options, observer, null, control));
            hooks?.Ended?.Invoke();
            var metadata = run.WeightsMetadata();
            WeightsFile.Save(folder.File(RunFolder.Weights), result.Weights, metadata);
            WeightsFile.Save(folder.File(RunFolder.SelectedWeights), result.SelectedWeights, metadata);
            var summary = Summary(run, RunOutcome.Completed, null, history, result);
            folder.WriteJson(RunFolder.Summary, summary);
            folder.WriteJson(RunFolder.Timing, Timing(result.Epochs));
            DrawPlots(folder, progress);
            return new RunOutcome(RunOutcome.Completed, 0, summary, history, wall.Elapsed);
        }
        catch (TrainingInterruptedException x) when (started)
        {
            return End(RunOutcome.Interrupted, 130, x.Message + " The checkpoint holds that state: lifting resume " + folder.Path);
        }
        catch (TrainingDivergedException x) when (started)
        {
            return End(RunOutcome.Diverged, 3, x.Message + (File.Exists(folder.File(RunFolder.CheckpointFile))
                ? " The checkpoint holds the last good epoch." : " No epoch completed, so there is no checkpoint."));
        }
        catch (Exception x) when (started && x is not OutOfMemoryException)
        {
            return End(RunOutcome.Failed, 1, $"{x.GetType().Name}: {x.Message.ReplaceLineEndings(" ")}");
        }

        RunOutcome End(string status, int code, string message)
        {
            hooks?.Ended?.Invoke();
            var summary = Summary(run, status, message, history, null);
            folder.WriteJson(RunFolder.Summary, summary);
            folder.WriteJson(RunFolder.Timing, Timing(history));
            DrawPlots(folder, progress);
            return new RunOutcome(status, code, summary, history, wall.Elapsed);
        }
    }

    /// Plots are derived files: a failure to draw them is reported, not fatal.
    public static void DrawPlots(RunFolder folder, Progress progress)
    {
        try { Plots.ForRun(folder); }
        catch (Exception x) when (x is not OutOfMemoryException)
        {
            progress.Line($"warning: plots not drawn ({x.GetType().Name}: {x.Message.ReplaceLineEndings(" ")})");
        }
    }

    private static double Round(double v) => Math.Round(v, 6);

    /// A rounded number; a non-finite one as text ("NaN"), which JSON has no number for.
    private static JsonNode? Number(double? v) => v switch
    {
        null => null,
        { } d when double.IsFinite(d) => JsonValue.Create(Round(d)),
        { } d => JsonValue.Create(d.ToString(CultureInfo.InvariantCulture)),
    };

    /// A small quantity (a defect) to 6 significant digits: rounding it to 6 decimals would make
    /// 4.2e-8 a 0.
    private static JsonNode? Significant(double v) =>
        v == 0 || !double.IsFinite(v) ? Number(v)
        : JsonValue.Create(double.Parse(v.ToString("G6", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture));

    /// What the run reached: a pure function of the config and the machine (no timings), so two
    /// runs of one config write the same summary.json byte for byte.
    public static JsonObject Summary(PreparedRun run, string status, string? message, IReadOnlyList<EpochMetrics> history, TrainingResult? result)
    {
        var s = new JsonObject
        {
            ["status"] = status,
        };
        if (message is not null) s["message"] = message;
        s["method"] = run.Method.Name;
        s["family"] = run.Method.Arguments.Method.Family;
        s["formulation"] = run.Method.Formulation.Description;
        s["data"] = run.Experiment.Data;
        s["net"] = run.Experiment.Net;
        s["epochs"] = history.Count;
        s["planned_epochs"] = run.Options.Epochs;
        var onValidation = run.Options.Selection == Selection.ValidationAccuracy;
        var selected = result?.Selected
            ?? (onValidation ? history.Where(m => m.ValidationAccuracy is not null).OrderByDescending(m => m.ValidationAccuracy).ThenBy(m => m.Epoch).FirstOrDefault() : null)
            ?? history.LastOrDefault();
        if (selected is not null)
        {
            var byValidation = result is not null ? result.SelectedBy == Selection.ValidationAccuracy : onValidation && selected.ValidationAccuracy is not null;
            s["selected_by"] = byValidation ? "validation_accuracy" : "last_epoch";
            s["selected_epoch"] = selected.Epoch;
            s["validation_accuracy"] = Number(selected.ValidationAccuracy);
            s["test_accuracy"] = Number(selected.TestAccuracy);
            s["final_validation_accuracy"] = Number(history[^1].ValidationAccuracy);
            s["final_test_accuracy"] = Number(history[^1].TestAccuracy);
            s["train_loss"] = Number(history[^1].TrainLoss);
        }
        if (result is not null)
        {
            s["stopped_early"] = result.StoppedEarly;
            s["per_example_bytes"] = result.PerExampleBytes;
            s["state_bytes"] = result.StateBytes;
            if (run.Method.Formulation.PlayerNames.Count > 1)
            {
                s["defect"] = Significant(result.FinalDefect);
                s["defect_before_finish"] = Significant(result.DefectBeforeFinish);
                s["batch_defect"] = Significant(result.FinalBatchDefect);
            }
        }
        else if (history.Count > 0 && history[^1].Defects.Count > 0) s["defect"] = Significant(history[^1].MeanDefect);
        s["threads"] = run.Engine.Threads;
        return s;
    }

    /// The run's timings, kept apart from the deterministic files.
    public static JsonObject Timing(IReadOnlyList<EpochMetrics> history)
    {
        var learning = history.Where(m => m.Held.Count == 0).Select(m => m.Seconds).ToArray();
        var t = new JsonObject
        {
            ["seconds_per_epoch"] = history.Count == 0 ? null : Round(history.Average(m => m.Seconds)),
            ["epoch_seconds"] = new JsonArray(history.Select(m => (JsonNode)JsonValue.Create(Round(m.Seconds))).ToArray()),
        };
        if (learning.Length > 0 && learning.Length != history.Count) t["seconds_per_learning_epoch"] = Round(learning.Average());
        return t;
    }

    public static string MetricsLine(EpochMetrics m) => JsonSerializer.Serialize(new Dictionary<string, object?>
    {
        ["epoch"] = m.Epoch,
        ["train_loss"] = m.TrainLoss,
        ["objective"] = m.Objective,
        ["loss_term"] = m.LossTerm,
        ["validation_accuracy"] = m.Validation?.Accuracy,
        ["validation_loss"] = m.Validation?.Loss,
        ["test_accuracy"] = m.Test.Accuracy,
        ["test_loss"] = m.Test.Loss,
        ["defects"] = m.Defects,
        ["batch_defect"] = m.BatchDefect,
        ["multiplier_norms"] = m.MultiplierNorms,
        ["cosine_to_backprop"] = m.CosineToBackprop,
        ["diagnostics"] = m.Diagnostics,
        ["held"] = m.Held,
    }, Cli.Json);

    private sealed class Observer : ITrainingObserver
    {
        public Action<int, int>? Start { get; init; }
        public Action<int, int, int, double, double>? Batch { get; init; }
        public Action<EpochMetrics>? Epoch { get; init; }
        public void OnStart(int epochs, int batchesPerEpoch) => Start?.Invoke(epochs, batchesPerEpoch);
        public void OnBatch(int epoch, int batch, int batchesPerEpoch, double loss, double objective) => Batch?.Invoke(epoch, batch, batchesPerEpoch, loss, objective);
        public void OnEpoch(EpochMetrics metrics) => Epoch?.Invoke(metrics);
    }
}
