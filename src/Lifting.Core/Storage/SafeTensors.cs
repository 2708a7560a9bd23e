using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Lifting.Data;
using static TorchSharp.torch;

namespace Lifting.Storage;

/// A named tensor as stored in a file.
public sealed record NamedTensor(string Name, Tensor Value);

/// The contents of a tensor file: its tensors in file order (on the CPU, owned by the caller) and
/// its string metadata.
public sealed class TensorFile : IDisposable
{
    public TensorFile(IReadOnlyList<NamedTensor> tensors, IReadOnlyDictionary<string, string> metadata)
    {
        Tensors = tensors;
        Metadata = metadata;
    }

    public IReadOnlyList<NamedTensor> Tensors { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    public Tensor this[string name] => Tensors.FirstOrDefault(t => t.Name == name)?.Value
        ?? throw new KeyNotFoundException($"No tensor '{name}' in the file.");

    public bool Contains(string name) => Tensors.Any(t => t.Name == name);

    public void Dispose()
    {
        foreach (var t in Tensors) t.Value.Dispose();
    }
}

/// The safetensors format (Hugging Face), written and read without dependencies so that Lifting's
/// weights and checkpoints open in other tools as well:
///
///     8 bytes     N, the header's length (unsigned 64-bit little-endian)
///     N bytes     a UTF-8 JSON object: for every tensor `"name": {"dtype": "F32", "shape": [..],
///                 "data_offsets": [begin, end]}` (offsets into the data section), and optionally
///                 `"__metadata__": {string: string}`; padded with spaces
///     the rest    the tensors' values, row-major, little-endian, back to back in file order
///
/// Data types: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL.
///
/// Every file written here carries a checksum in its metadata, "sha256" = the SHA-256 (hex) of
/// the tensor entries (name, dtype, shape, in file order), the other metadata (sorted by key) and
/// the data section; a file whose checksum does not match is refused when read, so flipped bits
/// in a checkpoint or a weights file never resume or evaluate silently. Files without the key
/// (other writers) are read unchecked.
public static class SafeTensors
{
    private const string MetadataKey = "__metadata__";

    /// The metadata key of the checksum.
    public const string ChecksumKey = "sha256";

    private static readonly (ScalarType Type, string Code)[] Codes =
    {
        (ScalarType.Float64, "F64"), (ScalarType.Float32, "F32"), (ScalarType.Float16, "F16"), (ScalarType.BFloat16, "BF16"),
        (ScalarType.Int64, "I64"), (ScalarType.Int32, "I32"), (ScalarType.Int16, "I16"), (ScalarType.Int8, "I8"),
        (ScalarType.Byte, "U8"), (ScalarType.Bool, "BOOL"),
    };

    /// Writes `tensors` (any device; copied to the CPU) in order, with `metadata`.
    public static void Write(Stream stream, IReadOnlyList<NamedTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var names = new HashSet<string>();
        var header = new JsonObject();
        var meta = new JsonObject();
        header[MetadataKey] = meta;
        var blobs = new List<byte[]>();
        var entries = new List<(string Name, string Code, long[] Shape)>();
        long offset = 0;
        foreach (var (name, value) in tensors)
        {
            if (name == MetadataKey || !names.Add(name)) throw new ArgumentException($"Invalid tensor name '{name}' (names are unique and not {MetadataKey}).");
            using var scope = NewDisposeScope();
            var cpu = value.detach().cpu().contiguous();
            var bytes = cpu.bytes.ToArray();
            header[name] = new JsonObject
            {
                ["dtype"] = Code(cpu.dtype),
                ["shape"] = new JsonArray(cpu.shape.Select(d => (JsonNode)JsonValue.Create(d)).ToArray()),
                ["data_offsets"] = new JsonArray(JsonValue.Create(offset), JsonValue.Create(offset + bytes.Length)),
            };
            blobs.Add(bytes);
            entries.Add((name, Code(cpu.dtype), cpu.shape));
            offset += bytes.Length;
        }
        var kept = (metadata ?? new Dictionary<string, string>()).Where(p => p.Key != ChecksumKey).ToArray();
        foreach (var (k, v) in kept) meta[k] = v;
        meta[ChecksumKey] = Checksum(entries, kept, blobs);
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        var padded = (json.Length + 7) / 8 * 8;
        var length = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded);
        stream.Write(length);
        stream.Write(json);
        for (int i = json.Length; i < padded; i++) stream.WriteByte((byte)' ');
        foreach (var blob in blobs) stream.Write(blob);
    }

    /// Writes the file to `path` through a temporary sibling renamed into place: a reader never
    /// sees a half-written file, and an interrupted write leaves the previous file intact.
    public static void Save(string path, IReadOnlyList<NamedTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var temp = path + ".tmp";
        using (var file = File.Create(temp))
        {
            Write(file, tensors, metadata);
            file.Flush(flushToDisk: true);
        }
        File.Move(temp, path, overwrite: true);
    }

    /// Reads a file written by `Write` (or by any safetensors writer). Errors name the file and the
    /// problem (DataFormatException).
    public static TensorFile Load(string path)
    {
        if (!File.Exists(path)) throw new DataFormatException($"{path}: file not found");
        using var stream = File.OpenRead(path);
        return Read(stream, Path.GetFileName(path));
    }

    public static TensorFile Read(Stream stream, string name)
    {
        var lengthBytes = new byte[8];
        if (stream.ReadAtLeast(lengthBytes, 8, throwOnEndOfStream: false) < 8) throw new DataFormatException($"{name}: truncated: too short for a safetensors header");
        var headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength > 100_000_000)
            throw new DataFormatException($"{name}: not a safetensors file (header length {headerLength})");
        if (stream.CanSeek && (long)headerLength > stream.Length - 8)
            throw new DataFormatException($"{name}: truncated: the header needs {headerLength} bytes, the file holds {stream.Length - 8} after the length");
        var headerBytes = new byte[headerLength];
        if (stream.ReadAtLeast(headerBytes, headerBytes.Length, throwOnEndOfStream: false) < headerBytes.Length)
            throw new DataFormatException($"{name}: truncated header");
        JsonObject header;
        try { header = JsonNode.Parse(Encoding.UTF8.GetString(headerBytes)) as JsonObject ?? throw new DataFormatException($"{name}: the header is not a JSON object"); }
        catch (JsonException e) { throw new DataFormatException($"{name}: malformed header ({e.Message.Split('\n')[0]})"); }

        var metadata = new Dictionary<string, string>();
        var entries = new List<(string Name, ScalarType Type, long[] Shape, long Begin, long End)>();
        foreach (var (key, node) in header)
        {
            if (key == MetadataKey)
            {
                if (node is JsonObject meta)
                    foreach (var (k, v) in meta) metadata[k] = v?.GetValue<string>() ?? "";
                continue;
            }
            try
            {
                var o = (JsonObject)node!;
                var type = Type(o["dtype"]!.GetValue<string>(), name, key);
                var shape = o["shape"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray();
                var offsets = o["data_offsets"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray();
                entries.Add((key, type, shape, offsets[0], offsets[1]));
            }
            catch (Exception e) when (e is InvalidCastException or NullReferenceException or InvalidOperationException or FormatException or IndexOutOfRangeException)
            {
                throw new DataFormatException($"{name}: malformed entry for tensor '{key}'");
            }
        }
        entries.Sort((a, b) => a.Begin.CompareTo(b.Begin));
        var tensors = new List<NamedTensor>();
        var blobs = new List<byte[]>();
        try
        {
            long position = 0;
            foreach (var (key, type, shape, begin, end) in entries)
            {
                var count = shape.Aggregate(1L, (a, b) => a * b);
                using var probe = empty(0, dtype: type);
                if (begin != position || end - begin != count * probe.ElementSize || shape.Any(d => d < 0))
                    throw new DataFormatException($"{name}: tensor '{key}' has inconsistent offsets [{begin}, {end}) for shape [{string.Join(", ", shape)}]");
                var bytes = new byte[end - begin];
                if (stream.ReadAtLeast(bytes, bytes.Length, throwOnEndOfStream: false) < bytes.Length)
                    throw new DataFormatException($"{name}: truncated: tensor '{key}' needs {bytes.Length} bytes");
                blobs.Add(bytes);
                var t = empty(shape, dtype: type);
                if (bytes.Length > 0) t.bytes = bytes;
                tensors.Add(new NamedTensor(key, t));
                position = end;
            }
            if (metadata.TryGetValue(ChecksumKey, out var expected))
            {
                var actual = Checksum(entries.Select(e => (e.Name, Code(e.Type), e.Shape)).ToList(), metadata.Where(p => p.Key != ChecksumKey).ToArray(), blobs);
                if (!string.Equals(actual, expected, StringComparison.OrdinalIgnoreCase))
                    throw new DataFormatException($"{name}: corrupt: its SHA-256 checksum does not match its contents (the tensors or the metadata changed after it was written)");
            }
        }
        catch
        {
            foreach (var t in tensors) t.Value.Dispose();
            throw;
        }
        return new TensorFile(tensors, metadata);
    }

    /// SHA-256 (lower-case hex) of the entries, the metadata sorted by key and the data, each
    /// field followed by a NUL byte.
    private static string Checksum(IReadOnlyList<(string Name, string Code, long[] Shape)> entries, IReadOnlyList<KeyValuePair<string, string>> metadata, IReadOnlyList<byte[]> blobs)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        void Field(string text)
        {
            hash.AppendData(Encoding.UTF8.GetBytes(text));
            hash.AppendData(stackalloc byte[] { 0 });
        }
        foreach (var (name, code, shape) in entries)
        {
            Field(name);
            Field(code);
            Field(string.Join(",", shape));
        }
        foreach (var (k, v) in metadata.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            Field(k);
            Field(v);
        }
        foreach (var blob in blobs) hash.AppendData(blob);
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    private static string Code(ScalarType type) =>
        Codes.FirstOrDefault(c => c.Type == type).Code ?? throw new ArgumentException($"Tensors of type {type} cannot be written to a safetensors file.");

    private static ScalarType Type(string code, string file, string tensor)
    {
        foreach (var (type, c) in Codes) if (c == code) return type;
        throw new DataFormatException($"{file}: tensor '{tensor}' has unsupported dtype '{code}'");
    }
}
