using System.Globalization;
using System.Reflection;
using static TorchSharp.torch;

namespace Lifting.Data;

/// Named datasets and datasets found by path.
///
/// - `digits`: UCI optical digits (8×8, 1797 images), embedded; split 80/20 with a fixed shuffle
///   into 1438 train / 359 test.
/// - `mnist-10k`: a 10,000-image MNIST subset (8,000 / 2,000), embedded.
/// - `fashion-mnist`: Fashion-MNIST at /usr/share/datasets/fashion-mnist (Debian package
///   dataset-fashion-mnist).
/// - a folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte
///   and t10k-labels-idx1-ubyte (each optionally .gz), or a digits-format .csv / .csv.gz file.
///
/// Inputs are scaled to [0, 1] and, unless `DataOptions.Scaling` says otherwise, standardised with
/// the training split's mean and std. A
/// validation split is carved from the training set (`DataOptions`) before the statistics are
/// taken, so nothing about the validation or test examples reaches training.
public static class DatasetCatalog
{
    public const string FashionMnistFolder = "/usr/share/datasets/fashion-mnist";
    public static IReadOnlyList<string> Names { get; } = new[] { "digits", "mnist-10k", "fashion-mnist" };

    private const int DigitsSplitSeed = 20240; // fixed: the digits split never changes

    /// Loads a dataset with the default options (CPU, 10 % of the training set for validation).
    public static DataSplit Load(string nameOrPath) => Load(nameOrPath, new DataOptions());

    /// Loads a dataset onto `device` with the default validation split.
    public static DataSplit Load(string nameOrPath, Device device) => Load(nameOrPath, new DataOptions { Device = device });

    public static DataSplit Load(string nameOrPath, DataOptions options)
    {
        options.Validate();
        VectorMath.Prepare(); // before standardisation or anything else computes on the whole set
        bool csv = !Directory.Exists(nameOrPath) && File.Exists(nameOrPath) && !Names.Contains(nameOrPath.ToLowerInvariant());
        if (!csv && options.Label is not null)
            throw new DataFormatException($"{nameOrPath}: a label column ('{options.Label}') applies to CSV data only");
        if (!csv && options.TestFraction is not null)
            throw new DataFormatException($"{nameOrPath}: a test fraction applies to CSV data only; this data comes with its own test split");
        if (!csv && options.Csv is { } format && format != CsvFormat.Default)
            throw new DataFormatException($"{nameOrPath}: skipping lines and header settings apply to CSV data only");
        IReadOnlyList<string> classNames = Array.Empty<string>();
        var (train, test) = nameOrPath.ToLowerInvariant() switch
        {
            "digits" => Digits(),
            "mnist-10k" => IdxFromResources("mnist-10k"),
            "fashion-mnist" => Directory.Exists(FashionMnistFolder) ? IdxFolder(FashionMnistFolder, "fashion-mnist")
                : throw new DataFormatException($"fashion-mnist: not found at {FashionMnistFolder}; install it with `apt-get install -y dataset-fashion-mnist` or pass --data FOLDER"),
            _ when Directory.Exists(nameOrPath) => IdxFolder(nameOrPath, Path.GetFileName(Path.GetFullPath(nameOrPath).TrimEnd('/'))),
            _ when File.Exists(nameOrPath) => Csv(nameOrPath, options, out classNames),
            _ => throw new DataFormatException($"unknown dataset '{nameOrPath}' (known: {string.Join(", ", Names)}, or a folder of IDX files, or a .csv file)"),
        };
        if (!train.Shape.Skip(1).SequenceEqual(test.Shape.Skip(1)))
            throw new DataFormatException($"{train.Name}: training examples are {Show(train.Shape)} but test examples are {Show(test.Shape)}");
        if (test.Count == 0) throw new DataFormatException($"{test.Name}: no test examples");
        if (train.Count == 0) throw new DataFormatException($"{train.Name}: no training examples");
        var (fit, validation) = CarveValidation(train, options);
        return Normalise(fit, validation, test, options, perFeature: csv) with { ClassNames = classNames };
    }

    internal sealed record Raw(string Name, float[] Values, long[] Shape, long[] Labels, int Classes)
    {
        public int Count => Labels.Length;
        public long ExampleSize => Shape.Skip(1).Aggregate(1L, (a, b) => a * b);

        /// The examples at `rows`, in that order.
        public Raw Take(IReadOnlyList<long> rows, string name)
        {
            var size = ExampleSize;
            var values = new float[rows.Count * size];
            for (int i = 0; i < rows.Count; i++) Array.Copy(Values, rows[i] * size, values, i * size, size);
            return new Raw(name, values, new[] { (long)rows.Count }.Concat(Shape.Skip(1)).ToArray(), rows.Select(r => Labels[r]).ToArray(), Classes);
        }
    }

    private static string Show(long[] shape) => string.Join("×", shape.Skip(1));

    /// Holds out round(fraction·N) training examples (at least one), picked by a seeded shuffle;
    /// both parts keep the original order of their examples.
    private static (Raw Train, Raw Validation) CarveValidation(Raw train, DataOptions options)
    {
        var baseName = train.Name.EndsWith("/train", StringComparison.Ordinal) ? train.Name[..^6] : train.Name;
        if (options.ValidationFraction == 0) return (train, train.Take(Array.Empty<long>(), $"{baseName}/validation"));
        int count = Math.Max(1, (int)Math.Round(train.Count * options.ValidationFraction));
        if (count >= train.Count)
            throw new DataFormatException($"{train.Name}: {train.Count} training examples leave none for training after a validation split of {options.ValidationFraction}");
        var order = MiniBatches.Permutation(train.Count, options.SplitSeed, 0);
        var held = order.Take(count).OrderBy(i => i).ToArray();
        var kept = order.Skip(count).OrderBy(i => i).ToArray();
        return (train.Take(kept, $"{baseName}/train"), train.Take(held, $"{baseName}/validation"));
    }

    private static DataSplit Normalise(Raw train, Raw validation, Raw test, DataOptions options, bool perFeature)
    {
        var device = options.Device;
        double mean = 0, std = 1;
        var normalisation = new Normalisation(0, 1);
        if (options.FixedNormalisation is { } fixedStats)
        {
            if (fixedStats.PerFeature && fixedStats.FeatureMeans.Count != train.ExampleSize)
                throw new DataFormatException($"{train.Name}: {train.ExampleSize} features, but the network was trained on {fixedStats.FeatureMeans.Count}");
            normalisation = fixedStats;
        }
        else if (options.Scaling == InputScaling.Standardise && perFeature)
        {
            int f = (int)train.ExampleSize;
            var means = new double[f];
            var stds = new double[f];
            for (int i = 0; i < train.Count; i++)
                for (int j = 0; j < f; j++) means[j] += train.Values[i * f + j];
            for (int j = 0; j < f; j++) means[j] /= Math.Max(1, train.Count);
            for (int i = 0; i < train.Count; i++)
                for (int j = 0; j < f; j++) { var d = train.Values[i * f + j] - means[j]; stds[j] += d * d; }
            for (int j = 0; j < f; j++) { stds[j] = Math.Sqrt(stds[j] / Math.Max(1, train.Count)); if (!(stds[j] > 0)) stds[j] = 1; }
            normalisation = new Normalisation(0, 1) { FeatureMeans = means, FeatureStds = stds };
        }
        else if (options.Scaling == InputScaling.Standardise)
        {
            mean = train.Values.Average(v => (double)v);
            std = Math.Sqrt(train.Values.Average(v => (v - mean) * (v - mean)));
            if (!(std > 0)) std = 1;
            normalisation = new Normalisation(mean, std);
        }
        mean = normalisation.Mean;
        std = normalisation.Std;
        var classes = Math.Max(train.Classes, test.Classes);
        Dataset Make(Raw raw)
        {
            using var scope = NewDisposeScope();
            var values = tensor(raw.Values).reshape(raw.Shape);
            if (normalisation.PerFeature)
            {
                var featureShape = new long[] { 1 }.Concat(raw.Shape.Skip(1)).ToArray();
                values = (values - tensor(normalisation.FeatureMeans.Select(v => (float)v).ToArray()).reshape(featureShape))
                         / tensor(normalisation.FeatureStds.Select(v => (float)v).ToArray()).reshape(featureShape);
            }
            var x = values.Minus(mean).Over(std).to(device);
            var y = tensor(raw.Labels).to(device);
            return new Dataset(raw.Name, x.MoveToOuterDisposeScope(), y.MoveToOuterDisposeScope(), classes);
        }
        return new DataSplit(Make(train), Make(validation), Make(test), normalisation);
    }

    // ---- UCI digits -------------------------------------------------------------------------

    private static (Raw, Raw) Digits()
    {
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream("Lifting.Data.digits.csv.gz")
            ?? throw new DataFormatException("digits: the embedded resource is missing from Lifting.Core");
        var rows = ParseDigitsCsv(Idx.Decompress(stream, "digits.csv.gz"), "digits.csv.gz");
        return SplitRows(rows, "digits");
    }

    /// A user's CSV file (`CsvData`): the test split is carved by a shuffle with the split seed
    /// (`DataOptions.TestFraction` of the rows, at least one), each part keeping the file's order.
    private static (Raw, Raw) Csv(string path, DataOptions options, out IReadOnlyList<string> classNames)
    {
        var table = CsvData.Read(path, options.Label, options.ClassNames, options.Csv);
        classNames = table.ClassNames;
        var name = Path.GetFileName(path);
        var stem = name.Split('.')[0];
        var fraction = options.TestFraction ?? DataOptions.DefaultTestFraction;
        int testCount = Math.Max(1, (int)Math.Round(table.Count * fraction));
        if (testCount >= table.Count)
            throw new DataFormatException($"{name}: {table.Count} rows leave none for training after a test split of {fraction}");
        var all = new Raw(stem, table.Features, new long[] { table.Count, table.FeatureCount }, table.Labels, table.ClassNames.Count);
        var order = MiniBatches.Permutation(table.Count, options.SplitSeed, 1);
        var test = order.Take(testCount).OrderBy(i => i).ToArray();
        var train = order.Skip(testCount).OrderBy(i => i).ToArray();
        return (all.Take(train, $"{stem}/train"), all.Take(test, $"{stem}/test"));
    }

    /// Rows of 64 pixel values (0 … 16) then a label (0 … 9), comma separated.
    internal static List<(float[] Pixels, int Label)> ParseDigitsCsv(byte[] bytes, string name)
    {
        var rows = new List<(float[], int)>();
        using var reader = new StringReader(System.Text.Encoding.UTF8.GetString(bytes));
        string? line;
        int number = 0;
        while ((line = reader.ReadLine()) is not null)
        {
            number++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            var fields = line.Split(',');
            if (fields.Length != 65) throw new DataFormatException($"{name}: line {number} has {fields.Length} fields, expected 65 (64 pixels and a label)");
            var pixels = new float[64];
            for (int j = 0; j < 64; j++)
            {
                if (!float.TryParse(fields[j], NumberStyles.Float, CultureInfo.InvariantCulture, out var v) || !float.IsFinite(v))
                    throw new DataFormatException($"{name}: line {number}, field {j + 1}: '{fields[j].Trim()}' is not a finite number");
                if (v < 0 || v > 16) throw new DataFormatException($"{name}: line {number}, field {j + 1}: pixel {v} is outside 0..16");
                pixels[j] = v / 16f;
            }
            if (!int.TryParse(fields[64], NumberStyles.Integer, CultureInfo.InvariantCulture, out var label) || label < 0 || label > 9)
                throw new DataFormatException($"{name}: line {number}: label '{fields[64].Trim()}' is not a class 0..9");
            rows.Add((pixels, label));
        }
        if (rows.Count < 2) throw new DataFormatException($"{name}: needs at least two rows, found {rows.Count}");
        return rows;
    }

    private static (Raw, Raw) SplitRows(List<(float[] Pixels, int Label)> rows, string name)
    {
        var order = MiniBatches.Permutation(rows.Count, DigitsSplitSeed, 0);
        int testCount = (int)Math.Round(rows.Count * 0.2);
        Raw Take(IEnumerable<long> indices, string part)
        {
            var picked = indices.Select(i => rows[(int)i]).ToArray();
            return new Raw($"{name}/{part}", picked.SelectMany(r => r.Pixels).ToArray(), new long[] { picked.Length, 1, 8, 8 },
                picked.Select(r => (long)r.Label).ToArray(), 10);
        }
        return (Take(order.Skip(testCount), "train"), Take(order.Take(testCount), "test"));
    }

    // ---- IDX --------------------------------------------------------------------------------

    private static (Raw, Raw) IdxFolder(string folder, string name)
    {
        string Find(string stem)
        {
            foreach (var candidate in new[] { stem, stem + ".gz", stem.Replace("-idx", ".idx") , stem.Replace("-idx", ".idx") + ".gz" })
            {
                var path = Path.Combine(folder, candidate);
                if (File.Exists(path)) return path;
            }
            throw new DataFormatException($"{folder}: no {stem}[.gz] in this folder (an IDX dataset needs train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)");
        }
        var train = FromIdx(Idx.ReadImages(Find("train-images-idx3-ubyte")), Idx.ReadLabels(Find("train-labels-idx1-ubyte")), $"{name}/train", Find("train-labels-idx1-ubyte"));
        var test = FromIdx(Idx.ReadImages(Find("t10k-images-idx3-ubyte")), Idx.ReadLabels(Find("t10k-labels-idx1-ubyte")), $"{name}/test", Find("t10k-labels-idx1-ubyte"));
        return (train, test);
    }

    private static (Raw, Raw) IdxFromResources(string name)
    {
        var dir = Path.Combine(Path.GetTempPath(), $"lifting-{name}-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            var assembly = Assembly.GetExecutingAssembly();
            foreach (var file in new[] { "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz" })
            {
                using var stream = assembly.GetManifestResourceStream($"Lifting.Data.{name}.{file}")
                    ?? throw new DataFormatException($"{name}: the embedded resource {file} is missing from Lifting.Core");
                using var target = File.Create(Path.Combine(dir, file));
                stream.CopyTo(target);
            }
            return IdxFolder(dir, name);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static Raw FromIdx(IdxImages images, byte[] labels, string name, string labelPath)
    {
        var labelFile = Path.GetFileName(labelPath);
        if (images.Count != labels.Length)
            throw new DataFormatException($"{labelFile}: {labels.Length} labels for {images.Count} images");
        const int classes = 10;
        var y = new long[labels.Length];
        for (int i = 0; i < labels.Length; i++)
        {
            if (labels[i] >= classes) throw new DataFormatException($"{labelFile}: label {labels[i]} at index {i} is outside 0..{classes - 1}");
            y[i] = labels[i];
        }
        var x = new float[images.Pixels.Length];
        for (int i = 0; i < x.Length; i++) x[i] = images.Pixels[i] / 255f;
        return new Raw(name, x, new long[] { images.Count, 1, images.Rows, images.Columns }, y, classes);
    }
}
