using System.Text;
using System.Text.Json;
using Lifting.Programs;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Host;

/// A run folder: config.json (every setting and the environment), metrics.jsonl (one line per
/// epoch), summary.json (what the run reached), timing.json (seconds per epoch), weights.bin (the
/// final weights) and weights-selected.bin (the weights of the epoch selected on validation). All
/// but timing.json are a pure function of the config and the machine: two runs of one config
/// write them byte for byte alike. Every file is written to a temporary sibling and renamed into
/// place, so an interrupted run never leaves a half-written file and never damages what an
/// earlier write produced.
public sealed class RunFolder
{
    private readonly List<string> metricLines = new();

    public RunFolder(string path)
    {
        Path = System.IO.Path.GetFullPath(path);
        if (File.Exists(Path)) throw new UsageException($"--out {path}: a file of that name exists; give a folder");
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public void WriteConfig(string json) => WriteAtomically("config.json", json + "\n");

    public void AppendMetrics(string jsonLine)
    {
        metricLines.Add(jsonLine);
        WriteAtomically("metrics.jsonl", string.Join("\n", metricLines) + "\n");
    }

    public void WriteSummary(string json) => WriteAtomically("summary.json", json + "\n");

    public void WriteTiming(string json) => WriteAtomically("timing.json", json + "\n");

    /// Weights as a small self-describing binary file: count, then per tensor its name, rank,
    /// shape and float32 values (little-endian).
    public void WriteWeights(string name, NestedProgram program, Weights weights)
    {
        using var memory = new MemoryStream();
        using (var writer = new BinaryWriter(memory, Encoding.UTF8, leaveOpen: true))
        {
            writer.Write("lifting-weights-v1");
            writer.Write(weights.Tensors.Count);
            for (int i = 0; i < weights.Tensors.Count; i++)
            {
                var t = weights.Tensors[i].detach().cpu().to_type(ScalarType.Float32).contiguous();
                writer.Write(program.ParameterNames[i]);
                writer.Write(t.shape.Length);
                foreach (var d in t.shape) writer.Write(d);
                foreach (var v in t.data<float>()) writer.Write(v);
            }
        }
        WriteAtomically(name, memory.ToArray());
    }

    private void WriteAtomically(string name, string text) => WriteAtomically(name, Encoding.UTF8.GetBytes(text));

    private void WriteAtomically(string name, byte[] bytes)
    {
        var target = System.IO.Path.Combine(Path, name);
        var temp = target + ".tmp";
        File.WriteAllBytes(temp, bytes);
        File.Move(temp, target, overwrite: true);
    }
}
