using System.Globalization;
using Lifting.Storage;
using Lifting.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Lifting.Host;

/// A run's TensorBoard event file (`events.out.tfevents.*` in the run folder, written through
/// TorchSharp's `torch.utils.tensorboard.SummaryWriter`; `tensorboard --logdir runs` shows every
/// run folder as a run). Tags:
///
///   per epoch (step = epoch):   loss/train, loss/validation, loss/test, accuracy/validation,
///                               accuracy/test, lifted/objective, lifted/loss_term, defect/mean,
///                               defect/block{k}, defect/last_batch, multipliers/block{k} (mean |λ_k|²),
///                               cosine_to_backprop, diagnostics/{name}, time/epoch_seconds;
///                               histograms weights/{parameter} of every weight tensor;
///   every N mini-batches         batch/loss and batch/lifted_objective (step = mini-batches since
///   (--log-every N):            the start of training).
///
/// Logging is a by-product: a failure to write is reported once as a warning and logging stops;
/// the run goes on.
public sealed class TensorBoardLog
{
    public const int DefaultLogEvery = 10;

    private readonly SummaryWriter writer;
    private readonly int logEvery;
    private readonly Action<string> warn;
    private int batchesPerEpoch = 1;
    private bool failed;

    private TensorBoardLog(SummaryWriter writer, int logEvery, Action<string> warn)
    {
        this.writer = writer;
        this.logEvery = logEvery;
        this.warn = warn;
    }

    /// A new event file in `folder` (which exists); null, after a warning, when it cannot be made.
    public static TensorBoardLog? Open(string folder, int logEvery, Action<string> warn)
    {
        try { return new TensorBoardLog(utils.tensorboard.SummaryWriter(folder), logEvery, warn); }
        catch (Exception x) when (x is IOException or UnauthorizedAccessException)
        {
            warn($"warning: no TensorBoard event file ({x.GetType().Name}: {Cli.OneLine(x.Message)})");
            return null;
        }
    }

    /// The event files of a run folder.
    public static string[] Files(string folder) => Directory.GetFiles(folder, "events.out.tfevents.*");

    public void Start(int batchesPerEpoch) => this.batchesPerEpoch = Math.Max(1, batchesPerEpoch);

    public void Batch(int epoch, int batch, double loss, double objective)
    {
        var step = (epoch - 1) * batchesPerEpoch + batch;
        if (logEvery <= 0 || step % logEvery != 0) return;
        Write(() =>
        {
            Scalar("batch/loss", loss, step);
            Scalar("batch/lifted_objective", objective, step);
        });
    }

    public void Epoch(EpochMetrics m) => Write(() =>
    {
        var e = m.Epoch;
        Scalar("loss/train", m.TrainLoss, e);
        if (m.Validation is { } v)
        {
            Scalar("loss/validation", v.Loss, e);
            Scalar("accuracy/validation", v.Accuracy, e);
        }
        Scalar("loss/test", m.Test.Loss, e);
        Scalar("accuracy/test", m.Test.Accuracy, e);
        Scalar("lifted/objective", m.Objective, e);
        Scalar("lifted/loss_term", m.LossTerm, e);
        if (m.Defects.Count > 0)
        {
            Scalar("defect/mean", m.MeanDefect, e);
            for (int k = 0; k < m.Defects.Count; k++) Scalar($"defect/block{k + 1}", m.Defects[k], e);
            Scalar("defect/last_batch", m.BatchDefect, e);
        }
        for (int k = 0; k < m.MultiplierNorms.Count; k++) Scalar($"multipliers/block{k + 1}", m.MultiplierNorms[k], e);
        if (m.CosineToBackprop is { } c) Scalar("cosine_to_backprop", c, e);
        foreach (var (name, value) in m.Diagnostics) Scalar($"diagnostics/{name}", value, e);
        Scalar("time/epoch_seconds", m.Seconds, e);
    });

    /// Histograms of the weights at an epoch's end, from the checkpoint the trainer hands out then
    /// (`weights/NAME` of the problem's state; step-rule state, `NAME#...`, is left out).
    public void Weights(TrainingSnapshot snapshot)
    {
        if (snapshot.State.BatchesDone != 0) return; // an interruption inside an epoch
        Write(() =>
        {
            using var _ = no_grad();
            foreach (var (name, t) in snapshot.Problem.StateTensors)
            {
                if (!name.StartsWith("weights/", StringComparison.Ordinal) || name.Contains('#') || t.NumberOfElements == 0) continue;
                using var scope = NewDisposeScope();
                var values = t.detach().cpu().to_type(ScalarType.Float64).flatten();
                if (!values.isfinite().all().ToBoolean()) continue;
                writer.add_histogram(name, values, snapshot.State.CompletedEpochs);
            }
        });
    }

    private void Scalar(string tag, double value, int step)
    {
        if (double.IsFinite(value)) writer.add_scalar(tag, (float)value, step);
    }

    private void Write(Action write)
    {
        if (failed) return;
        try { write(); }
        catch (Exception x) when (x is not OutOfMemoryException)
        {
            failed = true;
            warn(string.Create(CultureInfo.InvariantCulture, $"warning: TensorBoard logging stopped ({x.GetType().Name}: {Cli.OneLine(x.Message)})"));
        }
    }
}
