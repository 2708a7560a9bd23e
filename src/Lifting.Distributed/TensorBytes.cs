using Lifting.Storage;
using static TorchSharp.torch;

namespace Lifting.Distributed;

/// Tensors as bytes on the wire: the safetensors layout the project writes its weights and
/// checkpoints in (`SafeTensors.Write`), names "P/V" for variable V of player P.
public static class TensorBytes
{
    public static byte[] Encode(IReadOnlyList<(string Name, Tensor Value)> tensors)
    {
        using var stream = new MemoryStream();
        using (no_grad())
            SafeTensors.Write(stream, tensors.Select(t => new NamedTensor(t.Name, t.Value.detach())).ToArray());
        return stream.ToArray();
    }

    /// The tensors of `bytes` in order (on the CPU; the caller owns them).
    public static TensorFile Decode(byte[] bytes)
    {
        using var stream = new MemoryStream(bytes, writable: false);
        return SafeTensors.Read(stream, "message");
    }
}

/// A run's state in messages of bounded size: tensors grouped into chunks of at most `MaxBytes`,
/// a larger tensor cut along its first dimension into row ranges named "NAME@FIRSTROW" (Orleans
/// refuses messages over 100 MB; a per-example store is larger on full datasets).
public static class StateChunks
{
    public const long MaxBytes = 16L << 20;

    public static List<byte[]> Encode(IEnumerable<(string Name, Tensor Value)> tensors, long maxBytes = MaxBytes)
    {
        var chunks = new List<byte[]>();
        var current = new List<(string, Tensor)>();
        long size = 0;
        void Flush()
        {
            if (current.Count == 0) return;
            chunks.Add(TensorBytes.Encode(current));
            current.Clear();
            size = 0;
        }
        foreach (var (name, t) in tensors)
        {
            long bytes = t.NumberOfElements * t.ElementSize;
            if (bytes <= maxBytes || t.dim() == 0 || t.shape[0] < 2)
            {
                if (size + bytes > maxBytes) Flush();
                current.Add((name, t));
                size += bytes;
                continue;
            }
            Flush();
            long rowBytes = Math.Max(1, bytes / t.shape[0]);
            long rows = Math.Max(1, maxBytes / rowBytes);
            for (long start = 0; start < t.shape[0]; start += rows)
            {
                using var slice = t.narrow(0, start, Math.Min(rows, t.shape[0] - start));
                chunks.Add(TensorBytes.Encode(new[] { ($"{name}@{start}", slice) }));
            }
        }
        Flush();
        return chunks;
    }

    /// Copies a chunk's tensors into `targets` (by name, a row range into its rows); names
    /// `targets` lacks are left alone.
    public static void Apply(byte[] chunk, IReadOnlyDictionary<string, Tensor> targets)
    {
        using var file = TensorBytes.Decode(chunk);
        using var _ = no_grad();
        foreach (var t in file.Tensors)
        {
            var at = t.Name.LastIndexOf('@');
            if (at > 0 && long.TryParse(t.Name[(at + 1)..], out var start) && targets.TryGetValue(t.Name[..at], out var whole))
            {
                using var rows = whole.narrow(0, start, t.Value.shape[0]);
                rows.copy_(t.Value);
            }
            else if (targets.TryGetValue(t.Name, out var target)) target.copy_(t.Value);
        }
    }
}
