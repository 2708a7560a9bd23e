using System.Globalization;
using System.IO.Compression;
using System.Text;

namespace Lifting.Data;

/// A table read from a CSV file: one row per example, numeric feature columns and one label
/// column, labels mapped to classes 0 … K−1 in `ClassNames` order.
public sealed record CsvTable(string Name, IReadOnlyList<string> Columns, string LabelColumn, float[] Features, int FeatureCount, long[] Labels, IReadOnlyList<string> ClassNames)
{
    public int Count => Labels.Length;
}

/// How a CSV file is laid out beyond what is detected: leading lines to skip (e.g. the summary line
/// `569,30,malignant,benign` that scikit-learn's exports start with) and whether the first row
/// is a header (null: detected).
public sealed record CsvFormat
{
    /// Lines at the start of the file to ignore, whatever they hold.
    public int SkipRows { get; init; }

    /// True: the first row (after the skipped lines) is a header; false: it is data; null: a
    /// header when one of its fields is not a number above a field that is.
    public bool? Header { get; init; }

    public static CsvFormat Default { get; } = new();
}

/// A user's own tabular data (`--data FILE.csv`, plain or gzip-compressed):
///
/// - `CsvFormat.SkipRows` leading lines are skipped; a UTF-8 byte-order mark is dropped;
/// - fields separated by commas (tabs when the first line has tabs and no commas), optionally
///   quoted with "…" ("" inside quotes is a quote); blank lines are skipped;
/// - a header row is detected (unless `CsvFormat.Header` says): the first row is a header when one
///   of its fields is not a number while the field below it is; header names must be unique;
/// - the label column is named (`label`: a header name) or numbered (0-based, negative from the
///   end: −1 is the last column, the default); every other column is a feature and must hold
///   finite numbers within float32's range (the data is read as float32);
/// - labels are class names: when all are integers they are ordered numerically, otherwise
///   ordinally; class k is the k-th name. A given list of class names (a trained network's)
///   fixes the mapping instead, and a label outside it is refused.
///
/// The splits and the per-feature standardisation are the catalog's (`DatasetCatalog`).
public static class CsvData
{
    /// Larger files are refused rather than exhausting memory (and non-files such as /dev/zero,
    /// which never end, are recognised by their NUL bytes first).
    public const long MaxBytes = 1L << 30;

    public static bool IsCsvPath(string path) =>
        path.EndsWith(".csv", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".csv.gz", StringComparison.OrdinalIgnoreCase)
        || path.EndsWith(".tsv", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".tsv.gz", StringComparison.OrdinalIgnoreCase);

    public static CsvTable Read(string path, string? label = null, IReadOnlyList<string>? classNames = null, CsvFormat? format = null) =>
        Parse(ReadText(path), Path.GetFileName(path), label, classNames, format);

    /// The file's text, decompressed when it starts with the gzip magic; refuses binary content.
    internal static string ReadText(string path)
    {
        var name = Path.GetFileName(path);
        if (!File.Exists(path)) throw new DataFormatException($"{path}: file not found");
        using var file = File.OpenRead(path);
        var head = new byte[2];
        int got = file.ReadAtLeast(head, 2, throwOnEndOfStream: false);
        Stream source = file;
        if (file.CanSeek) file.Position = 0;
        else throw new DataFormatException($"{name}: not a regular file");
        if (got == 2 && head[0] == 0x1f && head[1] == 0x8b) source = new GZipStream(file, CompressionMode.Decompress);
        using var buffer = new MemoryStream();
        var chunk = new byte[1 << 20];
        try
        {
            int read;
            while ((read = source.Read(chunk, 0, chunk.Length)) > 0)
            {
                if (Array.IndexOf(chunk, (byte)0, 0, read) >= 0) throw new DataFormatException($"{name}: contains NUL bytes; not a text (CSV) file");
                if (buffer.Length + read > MaxBytes) throw new DataFormatException($"{name}: larger than {MaxBytes >> 30} GiB; not read");
                buffer.Write(chunk, 0, read);
            }
        }
        catch (InvalidDataException e) { throw new DataFormatException($"{name}: corrupt gzip data ({e.Message})"); }
        finally { if (source != file) source.Dispose(); }
        try { return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(buffer.GetBuffer(), 0, (int)buffer.Length); }
        catch (DecoderFallbackException) { throw new DataFormatException($"{name}: not UTF-8 text; not a CSV file"); }
    }

    /// Parses CSV text (see the class comment). Errors name the file, the line and the column.
    public static CsvTable Parse(string text, string name, string? label = null, IReadOnlyList<string>? classNames = null, CsvFormat? format = null)
    {
        format ??= CsvFormat.Default;
        if (format.SkipRows < 0) throw new DataFormatException($"{name}: cannot skip {format.SkipRows} lines (expected >= 0)");
        if (text.Length > 0 && text[0] == '\uFEFF') text = text[1..]; // a UTF-8 byte-order mark is not part of the first name
        var lines = new List<(int Number, string[] Fields)>();
        char? separator = null;
        int number = 0;
        foreach (var raw in text.Split('\n'))
        {
            number++;
            if (number <= format.SkipRows) continue;
            var line = raw.TrimEnd('\r');
            if (string.IsNullOrWhiteSpace(line)) continue;
            separator ??= line.Contains('\t') && !line.Contains(',') ? '\t' : ',';
            lines.Add((number, Split(line, separator.Value, name, number)));
        }
        if (lines.Count == 0)
            throw new DataFormatException(format.SkipRows > 0 ? $"{name}: no rows after the {format.SkipRows} skipped lines" : $"{name}: no rows");
        int columns = lines[0].Fields.Length;
        if (columns < 2) throw new DataFormatException($"{name}: line {lines[0].Number} has {columns} field; a CSV needs at least one feature and a label");
        for (int r = 1; r < lines.Count; r++)
        {
            var (n, fields) = lines[r];
            if (fields.Length == columns) continue;
            // The first line alone differs from the rest: a summary line before the table.
            var hint = r == 1 && lines.Count > 2 && lines[2].Fields.Length == fields.Length
                ? $" (is line {lines[0].Number} a summary line before the table? --skip-rows {lines[0].Number} skips it)" : "";
            throw new DataFormatException($"{name}: line {n} has {fields.Length} fields, expected {columns} like line {lines[0].Number}{hint}");
        }

        bool LooksLikeHeader(int below) => Enumerable.Range(0, columns).Any(j => !IsNumber(lines[0].Fields[j]) && IsNumber(lines[below].Fields[j]));
        bool header = format.Header ?? (lines.Count > 1 ? LooksLikeHeader(1) : LooksLikeNames(lines[0].Fields));
        var names = header ? lines[0].Fields.Select(f => f.Trim()).ToArray() : Enumerable.Range(0, columns).Select(j => $"column {j}").ToArray();
        var rows = header ? lines.Skip(1).ToList() : lines;
        if (rows.Count == 0) throw new DataFormatException($"{name}: a header (line {lines[0].Number}) and no data rows");
        if (header)
            for (int j = 0; j < columns; j++)
            {
                int k = Array.FindIndex(names, j + 1, n => string.Equals(n, names[j], StringComparison.Ordinal));
                if (k >= 0)
                    throw new DataFormatException($"{name}: line {lines[0].Number}: columns {j} and {k} are both named '{names[j]}'; give the columns unique names (or --no-header to number them)");
            }

        int labelIndex = LabelIndex(label, names, header, name);
        var features = new float[rows.Count * (columns - 1)];
        var labelTexts = new string[rows.Count];
        for (int i = 0; i < rows.Count; i++)
        {
            var (n, fields) = rows[i];
            int k = 0;
            for (int j = 0; j < columns; j++)
            {
                var field = fields[j].Trim();
                if (j == labelIndex)
                {
                    if (field.Length == 0) throw new DataFormatException($"{name}: line {n}: empty label");
                    labelTexts[i] = field;
                    continue;
                }
                if (field.Length == 0) throw new DataFormatException($"{name}: line {n}, column '{names[j]}': empty value (missing values are not supported)");
                if (!double.TryParse(field, NumberStyles.Float, CultureInfo.InvariantCulture, out var d))
                    throw new DataFormatException($"{name}: line {n}, column '{names[j]}': '{field}' is not a number");
                if (!double.IsFinite(d)) throw new DataFormatException($"{name}: line {n}, column '{names[j]}': '{field}' is not a finite number");
                var v = (float)d;
                if (!float.IsFinite(v))
                    throw new DataFormatException(string.Create(CultureInfo.InvariantCulture,
                        $"{name}: line {n}, column '{names[j]}': '{field}' is outside float32's range (±{float.MaxValue:G3}), in which CSV features are read"));
                features[i * (columns - 1) + k++] = v;
            }
        }

        IReadOnlyList<string> classes;
        if (classNames is { Count: > 0 }) classes = classNames;
        else
        {
            var distinct = labelTexts.Distinct(StringComparer.Ordinal).ToArray();
            classes = distinct.All(l => long.TryParse(l, NumberStyles.Integer, CultureInfo.InvariantCulture, out _))
                ? distinct.OrderBy(l => long.Parse(l, CultureInfo.InvariantCulture)).ToArray()
                : distinct.OrderBy(l => l, StringComparer.Ordinal).ToArray();
            if (classes.Count < 2) throw new DataFormatException($"{name}: the label column '{names[labelIndex]}' holds a single class ('{classes[0]}'); classification needs at least two");
        }
        var index = classes.Select((c, k) => (c, k)).ToDictionary(p => p.c, p => (long)p.k, StringComparer.Ordinal);
        var labels = new long[rows.Count];
        for (int i = 0; i < rows.Count; i++)
            labels[i] = index.TryGetValue(labelTexts[i], out var k) ? k
                : throw new DataFormatException($"{name}: line {rows[i].Number}: label '{labelTexts[i]}' is not one of the {classes.Count} classes the network was trained on");
        return new CsvTable(name, names, names[labelIndex], features, columns - 1, labels, classes);
    }

    private static int LabelIndex(string? label, string[] names, bool header, string name)
    {
        if (label is null) return names.Length - 1;
        var text = label.Trim();
        if (int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var index))
        {
            var resolved = index < 0 ? names.Length + index : index;
            if (resolved < 0 || resolved >= names.Length)
                throw new DataFormatException($"{name}: label column {index} is outside the {names.Length} columns (0 … {names.Length - 1}, or −1 … −{names.Length} from the end)");
            return resolved;
        }
        if (!header) throw new DataFormatException($"{name}: no header row, so the label column '{text}' cannot be found by name; give its index");
        var found = Array.FindIndex(names, n => string.Equals(n, text, StringComparison.Ordinal));
        if (found < 0) found = Array.FindIndex(names, n => string.Equals(n, text, StringComparison.OrdinalIgnoreCase));
        return found >= 0 ? found
            : throw new DataFormatException($"{name}: no column '{text}' (columns: {string.Join(", ", names)})");
    }

    /// A single line with no row below it is a header when none of its fields is a number (a lone
    /// data row has numeric features).
    private static bool LooksLikeNames(string[] fields) => fields.All(f => !IsNumber(f));

    private static bool IsNumber(string field) => double.TryParse(field.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out _);

    private static string[] Split(string line, char separator, string name, int number)
    {
        var fields = new List<string>();
        var current = new StringBuilder();
        bool quoted = false, wasQuoted = false;
        for (int i = 0; i < line.Length; i++)
        {
            var c = line[i];
            if (quoted)
            {
                if (c == '"' && i + 1 < line.Length && line[i + 1] == '"') { current.Append('"'); i++; }
                else if (c == '"') quoted = false;
                else current.Append(c);
            }
            else if (c == '"' && current.ToString().Trim().Length == 0 && !wasQuoted) { quoted = true; wasQuoted = true; current.Clear(); }
            else if (c == separator) { fields.Add(current.ToString()); current.Clear(); wasQuoted = false; }
            else current.Append(c);
        }
        if (quoted) throw new DataFormatException($"{name}: line {number}: unterminated quoted field");
        fields.Add(current.ToString());
        return fields.ToArray();
    }
}
