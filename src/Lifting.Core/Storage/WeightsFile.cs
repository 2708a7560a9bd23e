using Lifting.Data;
using Lifting.Programs;
using static TorchSharp.torch;

namespace Lifting.Storage;

/// A program's weights as a safetensors file (`SafeTensors`): one tensor per parameter, named by
/// `NestedProgram.ParameterNames` (e.g. "block1.dense(64→128).weight") in the program's order, in
/// the weights' own dtype, with string metadata: "format" = "lifting-weights", "program" = the
/// program's description, and whatever the caller adds (the host adds the data's normalisation and
/// class names, so the file is enough to evaluate the network on new data). Documented in
/// docs/host.md.
public static class WeightsFile
{
    public const string Format = "lifting-weights";

    public static void Save(string path, Weights weights, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var meta = new Dictionary<string, string>(metadata ?? new Dictionary<string, string>())
        {
            ["format"] = Format,
            ["program"] = weights.Program.ToString(),
        };
        var names = weights.Program.ParameterNames;
        var buffers = weights.Program.BufferNames;
        SafeTensors.Save(path, weights.Tensors.Select((t, i) => new NamedTensor(names[i], t))
            .Concat(weights.Buffers.Select((t, i) => new NamedTensor(buffers[i], t))).ToArray(), meta);
    }

    /// The weights of `program` stored at `path`, on `device`: every parameter by name, with the
    /// program's shapes. A file for another program is refused naming the first mismatch.
    public static Weights Load(string path, NestedProgram program, Device? device = null)
    {
        using var file = SafeTensors.Load(path);
        return FromFile(file, program, device ?? CPU, Path.GetFileName(path), prefix: "");
    }

    /// The metadata of a weights file (without reading its tensors into a program).
    public static IReadOnlyDictionary<string, string> Metadata(string path)
    {
        using var file = SafeTensors.Load(path);
        return file.Metadata;
    }

    /// The tensors named `prefix + parameter name` (and `prefix + buffer name`) of `file` as weights
    /// of `program`.
    internal static Weights FromFile(TensorFile file, NestedProgram program, Device device, string name, string prefix)
    {
        var names = program.ParameterNames;
        var expected = names.Concat(program.BufferNames).Select(n => prefix + n).ToHashSet();
        var extra = file.Tensors.Select(t => t.Name).Where(n => n.StartsWith(prefix, StringComparison.Ordinal) && !expected.Contains(n)).FirstOrDefault();
        if (extra is not null) throw new DataFormatException($"{name}: tensor '{extra}' is not a parameter of the program {program}");
        using var scope = NewDisposeScope();
        var tensors = new Tensor[names.Count];
        for (int i = 0; i < names.Count; i++)
        {
            if (!file.Contains(prefix + names[i])) throw new DataFormatException($"{name}: no tensor for parameter '{names[i]}' of the program {program}");
            var stored = file[prefix + names[i]];
            var spec = program.ParameterSpecs[i];
            if (!stored.shape.SequenceEqual(spec.Shape))
                throw new DataFormatException($"{name}: parameter '{names[i]}' has shape [{Shapes.Show(stored.shape)}], the program expects [{Shapes.Show(spec.Shape)}]");
            tensors[i] = stored.to(device).clone().requires_grad_(true).DetachFromDisposeScope();
        }
        var buffers = new Tensor[program.BufferNames.Count];
        for (int i = 0; i < buffers.Length; i++)
        {
            var bufferName = program.BufferNames[i];
            if (!file.Contains(prefix + bufferName)) throw new DataFormatException($"{name}: no tensor for buffer '{bufferName}' (running statistics) of the program {program}");
            var stored = file[prefix + bufferName];
            if (!stored.shape.SequenceEqual(program.BufferSpecs[i].Shape))
                throw new DataFormatException($"{name}: buffer '{bufferName}' has shape [{Shapes.Show(stored.shape)}], the program expects [{Shapes.Show(program.BufferSpecs[i].Shape)}]");
            buffers[i] = stored.to(device).clone().DetachFromDisposeScope();
        }
        return new Weights(program, tensors, buffers);
    }
}
