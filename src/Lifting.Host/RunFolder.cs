using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Lifting.Storage;

namespace Lifting.Host;

/// A run folder (docs/host.md):
///
///   config.json                   every resolved setting and the environment (`train --config` repeats it)
///   summary.json                  status (running, completed, interrupted, diverged, failed) and results
///   metrics.jsonl                 one JSON line per epoch, appended and flushed as each epoch ends
///   timing.json                   seconds per epoch (the only file that differs between repeats)
///   checkpoint.safetensors        the complete training state after the last epoch (or at Ctrl-C)
///   weights.safetensors           the final weights (`WeightsFile`)
///   weights-selected.safetensors  the weights of the epoch selected on validation
///   plots/*.png                   loss, accuracies, defect, multiplier norms
///   events.out.tfevents.*         TensorBoard scalars and weight histograms (`TensorBoardLog`), one file per process
///
/// A folder is created only once every input has been checked, and a non-empty folder is never
/// written into unless `--force` clears it first, so results of different runs never mix. Every
/// file but metrics.jsonl is written to a temporary sibling and renamed into place.
///
/// A run holds its folder: an exclusive lock on `.lock` inside it, from `Create` (or `Claim`, to
/// resume) until `Dispose`. The operating system drops the lock when the process ends, however it
/// ends, so a crashed run never blocks its folder. A second run aimed at a held folder (`--force`,
/// `resume`) is refused; two runs started in the same second with default names get two folders.
public sealed class RunFolder : IDisposable
{
    public const string Config = "config.json";
    public const string Summary = "summary.json";
    public const string Metrics = "metrics.jsonl";
    public const string Timing = "timing.json";
    public const string CheckpointFile = "checkpoint.safetensors";
    public const string Weights = "weights.safetensors";
    public const string SelectedWeights = "weights-selected.safetensors";
    public const string Plots = "plots";
    public const string LockFile = ".lock";

    private readonly bool force;
    private readonly string? numberedStem;
    private FileStream? claim;

    private RunFolder(string path, bool force = false, string? numberedStem = null)
    {
        Path = System.IO.Path.GetFullPath(path);
        this.force = force;
        this.numberedStem = numberedStem;
    }

    public string Path { get; private set; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    /// A folder to create: refused (before anything is written) when it is a file, or a non-empty
    /// folder and `force` is off.
    public static RunFolder ForNewRun(string path, bool force)
    {
        var folder = new RunFolder(path, force);
        if (System.IO.File.Exists(folder.Path)) throw new UsageException($"--out {path}: a file of that name exists; give a folder");
        if (Directory.Exists(folder.Path) && Directory.EnumerateFileSystemEntries(folder.Path).Any() && !force)
            throw new UsageException($"--out {path}: the folder is not empty; choose a new folder or add --force to replace its contents");
        var parent = System.IO.Path.GetDirectoryName(folder.Path);
        if (parent is not null && System.IO.File.Exists(parent)) throw new UsageException($"--out {path}: {parent} is a file");
        CheckCreatable(folder.Path, $"--out {path}");
        return folder;
    }

    /// Refuses, before anything runs, a folder that cannot be created or written (a read-only or
    /// virtual file system such as /proc, a missing permission): a probe folder is made and
    /// removed in the nearest existing ancestor, or in the folder itself when it exists.
    private static void CheckCreatable(string fullPath, string what)
    {
        var existing = fullPath;
        while (!Directory.Exists(existing))
        {
            if (System.IO.File.Exists(existing)) throw new UsageException($"{what}: {existing} is a file, so the folder cannot be created");
            existing = System.IO.Path.GetDirectoryName(existing);
            if (existing is null) return;
        }
        var probe = System.IO.Path.Combine(existing, $".lifting-probe-{Environment.ProcessId}-{Guid.NewGuid():N}");
        try
        {
            Directory.CreateDirectory(probe);
            Directory.Delete(probe);
        }
        catch (Exception x) when (x is IOException or UnauthorizedAccessException)
        {
            var reason = x is UnauthorizedAccessException ? "permission denied" : "the file system refuses new entries";
            throw new UsageException(existing == fullPath
                ? $"{what}: the folder cannot be written ({reason})"
                : $"{what}: the folder cannot be created in {existing} ({reason})");
        }
    }

    /// `path` when given, otherwise a fresh default folder runs/YYYYMMDD-HHMMSS-NAME (numbered if
    /// taken, also when another run takes it between now and `Create`).
    public static RunFolder ForOutput(string? path, bool force, string defaultName) =>
        path is not null ? ForNewRun(path, force) : ForDefault(defaultName);

    private static RunFolder ForDefault(string name) =>
        ForNumbered(System.IO.Path.Combine("runs", DateTime.Now.ToString("yyyyMMdd-HHmmss", System.Globalization.CultureInfo.InvariantCulture) + "-" + name));

    /// The first free folder of `stem`, `stem`-2, `stem`-3, …, chosen again at `Create` if another
    /// run has taken it meanwhile.
    public static RunFolder ForNumbered(string stem)
    {
        var folder = new RunFolder(FirstFree(stem), numberedStem: stem);
        CheckCreatable(folder.Path, $"the run folder {folder.Path} (give --out elsewhere)");
        return folder;
    }

    private static string FirstFree(string stem)
    {
        var path = stem;
        for (int k = 2; Directory.Exists(path) || System.IO.File.Exists(path); k++) path = $"{stem}-{k}";
        return path;
    }

    /// An existing run folder (for resume, plot, eval, compare).
    public static RunFolder Existing(string path)
    {
        var folder = new RunFolder(path);
        if (!Directory.Exists(folder.Path)) throw new UsageException($"{path}: no such run folder");
        if (!System.IO.File.Exists(folder.File(Config))) throw new UsageException($"{path}: not a run folder (no {Config})");
        return folder;
    }

    /// Creates and holds the folder, clearing what a forced run replaces. Refused when another run
    /// holds it, or when it has filled since `ForNewRun` looked (a default name moves on instead).
    public void Create()
    {
        while (true)
        {
            if (TryClaim())
            {
                var entries = Directory.EnumerateFileSystemEntries(Path).Where(e => System.IO.Path.GetFileName(e) != LockFile).ToArray();
                if (entries.Length == 0 || force)
                {
                    foreach (var entry in entries)
                    {
                        if (Directory.Exists(entry)) Directory.Delete(entry, recursive: true);
                        else System.IO.File.Delete(entry);
                    }
                    return;
                }
                Release();
                if (numberedStem is null)
                    throw new UsageException($"{Path}: the folder is not empty; choose a new folder or add --force to replace its contents");
            }
            else if (numberedStem is null) throw InUse();
            Path = System.IO.Path.GetFullPath(FirstFree(numberedStem));
        }
    }

    /// Holds an existing folder (to resume the run in it); refused when another run holds it.
    public void Claim()
    {
        if (!TryClaim()) throw InUse();
    }

    public void Dispose() => Release();

    private UsageException InUse() => new($"{Path}: the run folder is in use by another run (wait for it to end, or choose another folder)");

    private bool TryClaim()
    {
        if (claim is not null) return true;
        Directory.CreateDirectory(Path);
        try
        {
            // FileShare.None is an exclusive lock (flock on Unix, a share lock on Windows), released by the
            // kernel with the process; DeleteOnClose removes the file when the run lets go of it.
            claim = new FileStream(File(LockFile), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.DeleteOnClose);
            return true;
        }
        catch (IOException) { return false; }
    }

    private void Release()
    {
        claim?.Dispose();
        claim = null;
    }

    public void WriteText(string name, string text) => WriteAtomically(name, Encoding.UTF8.GetBytes(text.EndsWith('\n') ? text : text + "\n"));

    public void WriteJson(string name, JsonNode node) => WriteText(name, node.ToJsonString(Cli.IndentedJson));

    /// Starts metrics.jsonl with `lines` (those a checkpoint carries over on resume).
    public void ResetMetrics(IEnumerable<string> lines) => WriteAtomically(Metrics, Encoding.UTF8.GetBytes(string.Concat(lines.Select(l => l + "\n"))));

    /// Appends one line and flushes it to disk, so a crash loses nothing already reported.
    public void AppendMetrics(string jsonLine)
    {
        using var stream = new FileStream(File(Metrics), FileMode.Append, FileAccess.Write, FileShare.Read);
        var bytes = Encoding.UTF8.GetBytes(jsonLine + "\n");
        stream.Write(bytes);
        stream.Flush(flushToDisk: true);
    }

    public JsonObject ReadJson(string name)
    {
        var path = File(name);
        if (!System.IO.File.Exists(path)) throw new UsageException($"{Path}: no {name}");
        try { return JsonNode.Parse(System.IO.File.ReadAllText(path)) as JsonObject ?? throw new UsageException($"{path}: not a JSON object"); }
        catch (JsonException e) { throw new UsageException($"{path}: malformed JSON: {e.Message.Split('\n')[0]}"); }
    }

    public IReadOnlyList<JsonObject> ReadMetrics()
    {
        var path = File(Metrics);
        if (!System.IO.File.Exists(path)) return Array.Empty<JsonObject>();
        var lines = new List<JsonObject>();
        int number = 0;
        foreach (var line in System.IO.File.ReadLines(path))
        {
            number++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            try { lines.Add(JsonNode.Parse(line) as JsonObject ?? throw new UsageException($"{path}: line {number} is not a JSON object")); }
            catch (JsonException) { throw new UsageException($"{path}: line {number} is not valid JSON"); }
        }
        return lines;
    }

    public void SaveCheckpoint(TrainingSnapshot snapshot) => Checkpoint.Save(File(CheckpointFile), snapshot);

    public string PlotsFolder
    {
        get
        {
            var plots = File(Plots);
            Directory.CreateDirectory(plots);
            return plots;
        }
    }

    private void WriteAtomically(string name, byte[] bytes)
    {
        var target = File(name);
        var temp = target + ".tmp";
        System.IO.File.WriteAllBytes(temp, bytes);
        System.IO.File.Move(temp, target, overwrite: true);
    }
}
