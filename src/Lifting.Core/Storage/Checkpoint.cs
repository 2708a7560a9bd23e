using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Lifting.Data;
using Lifting.Formulations;
using Lifting.Programs;
using Lifting.Training;
using static TorchSharp.torch;

namespace Lifting.Storage;

/// What the trainer hands out to be saved: its own state, the lifted problem's state and the
/// weights of the epoch selected so far. Valid only during the call that receives it.
public sealed record TrainingSnapshot(TrainerState State, ICheckpointable Problem, Weights? Selected, NestedProgram Program);

/// A checkpoint: a safetensors file (`SafeTensors`) holding every tensor of the lifted problem's
/// state as `problem/NAME` (`ICheckpointable.StateTensors`), the selected weights as
/// `selected/PARAMETER`, LibTorch's CPU generator as `rng/cpu`, and in its metadata "format" =
/// "lifting-checkpoint", "trainer" = the `TrainerState` as JSON and "scalars" = the problem's
/// scalars as JSON. `Trainer.Train` continues from one exactly (`TrainingControl.ResumeFrom`).
public sealed class Checkpoint : IDisposable
{
    public const string Format = "lifting-checkpoint";

    internal static readonly JsonSerializerOptions Json = new()
    {
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    private readonly TensorFile file;

    private Checkpoint(TensorFile file, TrainerState state, IReadOnlyDictionary<string, double> scalars)
    {
        this.file = file;
        State = state;
        Scalars = scalars;
    }

    public TrainerState State { get; }
    public IReadOnlyDictionary<string, double> Scalars { get; }
    /// The file's metadata (the caller's keys as well as the checkpoint's own).
    public IReadOnlyDictionary<string, string> Metadata => file.Metadata;

    /// Writes `snapshot` atomically to `path` (see `SafeTensors.Save`).
    public static void Save(string path, TrainingSnapshot snapshot, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var tensors = new List<NamedTensor>();
        foreach (var (name, t) in snapshot.Problem.StateTensors) tensors.Add(new NamedTensor("problem/" + name, t));
        if (snapshot.Selected is { } selected)
        {
            for (int i = 0; i < selected.Tensors.Count; i++) tensors.Add(new NamedTensor("selected/" + snapshot.Program.ParameterNames[i], selected.Tensors[i]));
            for (int i = 0; i < selected.Buffers.Count; i++) tensors.Add(new NamedTensor("selected/" + snapshot.Program.BufferNames[i], selected.Buffers[i]));
        }
        using var rng = random.get_rng_state();
        tensors.Add(new NamedTensor("rng/cpu", rng));
        var meta = new Dictionary<string, string>(metadata ?? new Dictionary<string, string>())
        {
            ["format"] = Format,
            ["program"] = snapshot.Program.ToString(),
            ["trainer"] = JsonSerializer.Serialize(snapshot.State, Json),
            ["scalars"] = JsonSerializer.Serialize(snapshot.Problem.StateScalars, Json),
        };
        SafeTensors.Save(path, tensors, meta);
    }

    public static Checkpoint Load(string path)
    {
        var file = SafeTensors.Load(path);
        var name = Path.GetFileName(path);
        try
        {
            if (!file.Metadata.TryGetValue("format", out var format) || format != Format)
                throw new DataFormatException($"{name}: not a Lifting checkpoint (format '{format ?? "none"}')");
            TrainerState state;
            Dictionary<string, double> scalars;
            try
            {
                state = JsonSerializer.Deserialize<TrainerState>(file.Metadata["trainer"], Json) ?? throw new JsonException("null");
                scalars = JsonSerializer.Deserialize<Dictionary<string, double>>(file.Metadata.GetValueOrDefault("scalars", "{}"), Json) ?? new();
            }
            catch (Exception e) when (e is JsonException or KeyNotFoundException or NotSupportedException)
            {
                throw new DataFormatException($"{name}: malformed trainer state ({e.Message.Split('\n')[0]})");
            }
            return new Checkpoint(file, state, scalars);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// Copies the saved state into `problem` in place, and LibTorch's generator state back. Refuses
    /// a checkpoint of another problem, naming the first tensor that differs.
    public void RestoreInto(ICheckpointable problem)
    {
        using var _ = no_grad();
        var target = problem.StateTensors;
        foreach (var (key, t) in target)
        {
            if (!file.Contains("problem/" + key)) throw new ArgumentException($"The checkpoint has no tensor '{key}': it was taken from another method or network.");
            var saved = file["problem/" + key];
            if (!saved.shape.SequenceEqual(t.shape) || saved.dtype != t.dtype)
                throw new ArgumentException($"The checkpoint's '{key}' is {saved.dtype} [{Shapes.Show(saved.shape)}], the problem's {t.dtype} [{Shapes.Show(t.shape)}]: it was taken from another method or network.");
        }
        var extra = file.Tensors.Select(t => t.Name).FirstOrDefault(n => n.StartsWith("problem/", StringComparison.Ordinal) && !target.ContainsKey(n["problem/".Length..]));
        if (extra is not null) throw new ArgumentException($"The checkpoint holds '{extra["problem/".Length..]}', which this problem does not keep: it was taken from another method or network.");
        foreach (var (key, t) in target) t.copy_(file["problem/" + key]);
        problem.RestoreScalars(Scalars);
        random.set_rng_state(file["rng/cpu"]);
    }

    /// The selected weights saved with the checkpoint, or null when no epoch was selected yet.
    public Weights? SelectedWeights(NestedProgram program, Device device) =>
        file.Contains("selected/" + program.ParameterNames[0]) ? WeightsFile.FromFile(file, program, device, "checkpoint", "selected/") : null;

    public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"checkpoint after {State.CompletedEpochs} epochs and {State.BatchesDone} mini-batches");

    public void Dispose() => file.Dispose();
}
