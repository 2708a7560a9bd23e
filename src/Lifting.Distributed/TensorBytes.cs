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
