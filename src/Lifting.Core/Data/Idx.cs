using System.Buffers.Binary;
using System.IO.Compression;

namespace Lifting.Data;

/// Images as read from an IDX file: count × rows × cols unsigned bytes.
public sealed record IdxImages(int Count, int Rows, int Columns, byte[] Pixels);

/// The IDX format of MNIST-style datasets (gzip-compressed or raw; detected by content):
/// a big-endian magic number 0x0000 08 NN (08 = unsigned bytes, NN = rank), NN big-endian
/// dimension sizes, then the values.
public static class Idx
{
    public const int ImagesMagic = 0x00000803;
    public const int LabelsMagic = 0x00000801;

    public static IdxImages ReadImages(string path)
    {
        var bytes = ReadAll(path);
        var name = Path.GetFileName(path);
        Header(bytes, name, ImagesMagic, "images", 16);
        int count = Dimension(bytes, 4, name, "image count");
        int rows = Dimension(bytes, 8, name, "rows");
        int cols = Dimension(bytes, 12, name, "columns");
        long expected = (long)count * rows * cols;
        long found = bytes.Length - 16;
        if (found < expected) throw new DataFormatException($"{name}: truncated: expected {expected} pixel bytes for {count} images of {rows}×{cols}, found {found}");
        if (found > expected) throw new DataFormatException($"{name}: {found - expected} unexpected bytes after {count} images of {rows}×{cols}");
        return new IdxImages(count, rows, cols, bytes.AsSpan(16).ToArray());
    }

    public static byte[] ReadLabels(string path)
    {
        var bytes = ReadAll(path);
        var name = Path.GetFileName(path);
        Header(bytes, name, LabelsMagic, "labels", 8);
        int count = Dimension(bytes, 4, name, "label count");
        long found = bytes.Length - 8;
        if (found < count) throw new DataFormatException($"{name}: truncated: expected {count} label bytes, found {found}");
        if (found > count) throw new DataFormatException($"{name}: {found - count} unexpected bytes after {count} labels");
        return bytes.AsSpan(8).ToArray();
    }

    public static void WriteImages(string path, IdxImages images, bool gzip)
    {
        var header = new byte[16];
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(0), ImagesMagic);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), images.Count);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(8), images.Rows);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(12), images.Columns);
        Write(path, header.Concat(images.Pixels).ToArray(), gzip);
    }

    public static void WriteLabels(string path, byte[] labels, bool gzip)
    {
        var header = new byte[8];
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(0), LabelsMagic);
        BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), labels.Length);
        Write(path, header.Concat(labels).ToArray(), gzip);
    }

    /// The file's bytes, decompressed when they start with the gzip magic 1f 8b.
    internal static byte[] ReadAll(string path)
    {
        if (!File.Exists(path)) throw new DataFormatException($"{path}: file not found");
        using var stream = File.OpenRead(path);
        return Decompress(stream, Path.GetFileName(path));
    }

    internal static byte[] Decompress(Stream stream, string name)
    {
        using var buffer = new MemoryStream();
        stream.CopyTo(buffer);
        var raw = buffer.ToArray();
        if (raw.Length < 2 || raw[0] != 0x1f || raw[1] != 0x8b) return raw;
        try
        {
            using var gz = new GZipStream(new MemoryStream(raw), CompressionMode.Decompress);
            using var output = new MemoryStream();
            gz.CopyTo(output);
            return output.ToArray();
        }
        catch (InvalidDataException e)
        {
            throw new DataFormatException($"{name}: corrupt gzip data ({e.Message})");
        }
    }

    private static void Header(byte[] bytes, string name, int magic, string kind, int headerLength)
    {
        if (bytes.Length < 4) throw new DataFormatException($"{name}: truncated: {bytes.Length} bytes, too short for an IDX header");
        int found = BinaryPrimitives.ReadInt32BigEndian(bytes);
        if (found != magic)
            throw new DataFormatException($"{name}: bad magic number 0x{found:x8}, expected 0x{magic:x8} ({kind})");
        if (bytes.Length < headerLength) throw new DataFormatException($"{name}: truncated: {bytes.Length} bytes, too short for the {kind} header");
    }

    private static int Dimension(byte[] bytes, int offset, string name, string what)
    {
        int value = BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(offset));
        if (value <= 0) throw new DataFormatException($"{name}: {what} is {value}, expected a positive number");
        return value;
    }

    private static void Write(string path, byte[] content, bool gzip)
    {
        using var file = File.Create(path);
        if (gzip)
        {
            using var gz = new GZipStream(file, CompressionLevel.Fastest);
            gz.Write(content);
        }
        else file.Write(content);
    }
}
