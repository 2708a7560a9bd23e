using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Xml.Linq;

namespace Lifting;

/// Makes TorchSharp's native library loadable in hosts that have no build output of their own,
/// such as `dotnet fsi` with `#r "nuget: Lifting.Core"` (docs/engine.md, "The load fix").
///
/// A project that references Lifting.Core gets the fix at build time: the package's build targets
/// weaken libLibTorchSharp.so's GLIBCXX_3.4.32 need in the copy under the output folder. A script
/// host loads TorchSharp straight from the NuGet cache instead, where nothing may be edited, and
/// where LibTorchSharp and LibTorch lie in different packages, so the loader finds neither the
/// version nor the neighbours. When, and only when, TorchSharp's own first load attempt fails on
/// Linux x64, `Ensure` builds a folder in the user's cache ($XDG_CACHE_HOME or ~/.cache, then
/// lifting/native/KEY) holding symbolic links to LibTorch's libraries and libLibTorchSharp.so,
/// weakened if this system's libstdc++ lacks the version (a link otherwise), and loads it from
/// there; TorchSharp's later loads by name find the library already loaded. Elsewhere, and where
/// the first attempt succeeds, it does nothing.
///
/// Lifting.Core calls `Ensure` when it is first used. A script that calls TorchSharp before any
/// Lifting type calls it first itself.
public static class NativeBackend
{
    private const string Version = "GLIBCXX_3.4.32";
    private static readonly object gate = new();
    private static string? outcome;

    /// What the last `Ensure` did, one line (for diagnostics).
    public static string Outcome
    {
        get { lock (gate) return outcome ?? "not run"; }
    }

    /// Idempotent; never throws: if the library cannot be prepared, TorchSharp reports its own error
    /// at the first tensor operation and `Outcome` says why the fallback did not apply.
    public static void Ensure()
    {
        lock (gate)
        {
            if (outcome is not null) return;
            try { outcome = Prepare(); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException
                                      or DllNotFoundException or BadImageFormatException or System.Xml.XmlException)
            {
                outcome = $"fallback failed: {e.Message}";
            }
        }
    }

    private static string Prepare()
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64)
            return "not Linux x64: nothing to do";
        var torch = typeof(TorchSharp.torch).Assembly;
        if (NativeLibrary.TryLoad("LibTorchSharp", torch, null, out _)) return "TorchSharp's own load succeeds";

        var torchDirectory = Path.GetDirectoryName(torch.Location);
        if (string.IsNullOrEmpty(torchDirectory)) return "TorchSharp has no file location";
        var sharp = new[]
        {
            Path.Combine(torchDirectory, GlibcxxNeed.Library),
            Path.Combine(torchDirectory, "runtimes", "linux-x64", "native", GlibcxxNeed.Library),        // a build output
            Path.Combine(torchDirectory, "..", "..", "runtimes", "linux-x64", "native", GlibcxxNeed.Library), // the NuGet cache
        }.Select(Path.GetFullPath).FirstOrDefault(File.Exists);
        if (sharp is null) return $"no {GlibcxxNeed.Library} near {torchDirectory}";
        var sharpDirectory = Path.GetDirectoryName(sharp)!;
        var libtorch = File.Exists(Path.Combine(sharpDirectory, "libtorch_cpu.so")) ? sharpDirectory : LibTorchInPackages(torchDirectory);
        if (libtorch is null) return "LibTorch's CPU libraries not found beside TorchSharp or in its package folder";

        var image = File.ReadAllBytes(sharp);
        var weaken = GlibcxxNeed.Weaken(image, Version) == GlibcxxNeed.Outcome.Weakened && !GlibcxxNeed.SystemProvides(Version);
        if (!weaken && libtorch == sharpDirectory)
        {
            // A build output referenced by path (e.g. `#r` on its DLLs): the library is fine where it is.
            NativeLibrary.Load(sharp);
            return $"loaded {sharp}";
        }
        var folder = LinkFolder(sharp, libtorch, weaken ? image : null);
        NativeLibrary.Load(Path.Combine(folder, GlibcxxNeed.Library));
        return $"loaded {GlibcxxNeed.Library} from {folder}{(weaken ? $" ({Version} need weakened)" : "")}";
    }

    /// The LibTorch CPU package's native folder beside TorchSharp's in a NuGet package folder
    /// (…/torchsharp/V/lib/TFM/TorchSharp.dll → …/libtorch-cpu-linux-x64/W/runtimes/linux-x64/native),
    /// W being the version TorchSharp-cpu V depends on, or the only one present.
    private static string? LibTorchInPackages(string torchDirectory)
    {
        var torchSharpHome = Path.GetFullPath(Path.Combine(torchDirectory, "..", ".."));
        var packages = Path.GetFullPath(Path.Combine(torchSharpHome, "..", ".."));
        var root = Path.Combine(packages, "libtorch-cpu-linux-x64");
        if (!Directory.Exists(root)) return null;
        string Native(string version) => Path.Combine(root, version, "runtimes", "linux-x64", "native");
        var nuspec = Path.Combine(packages, "torchsharp-cpu", Path.GetFileName(torchSharpHome), "torchsharp-cpu.nuspec");
        if (File.Exists(nuspec))
        {
            var wanted = XDocument.Load(nuspec).Descendants()
                .Where(e => e.Name.LocalName == "dependency" && (string?)e.Attribute("id") == "libtorch-cpu")
                .Select(e => (string?)e.Attribute("version")).FirstOrDefault();
            if (wanted is not null && File.Exists(Path.Combine(Native(wanted), "libtorch_cpu.so"))) return Native(wanted);
        }
        var present = Directory.GetDirectories(root).Select(Path.GetFileName).Where(v => File.Exists(Path.Combine(Native(v!), "libtorch_cpu.so"))).ToArray();
        return present.Length == 1 ? Native(present[0]!) : null;
    }

    /// A folder of links to LibTorch's libraries plus libLibTorchSharp.so (the weakened image, or a
    /// link to the original), named by a hash of what it is made from; built once, then reused.
    private static string LinkFolder(string sharp, string libtorch, byte[]? weakened)
    {
        var key = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(
            $"{sharp}\n{File.GetLastWriteTimeUtc(sharp):O}\n{new FileInfo(sharp).Length}\n{libtorch}\n{weakened is not null}")))[..16].ToLowerInvariant();
        var cache = Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } xdg ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        var folder = Path.Combine(cache, "lifting", "native", key);
        if (File.Exists(Path.Combine(folder, GlibcxxNeed.Library))) return folder;

        // Built beside and renamed into place, so a concurrent or interrupted build never leaves half a folder.
        var building = folder + ".building-" + Guid.NewGuid().ToString("N");
        Directory.CreateDirectory(building);
        foreach (var file in Directory.GetFiles(libtorch))
            if (Path.GetFileName(file) != GlibcxxNeed.Library)
                File.CreateSymbolicLink(Path.Combine(building, Path.GetFileName(file)), file);
        if (weakened is not null) File.WriteAllBytes(Path.Combine(building, GlibcxxNeed.Library), weakened);
        else File.CreateSymbolicLink(Path.Combine(building, GlibcxxNeed.Library), sharp);
        try { Directory.Move(building, folder); }
        catch (IOException) when (File.Exists(Path.Combine(folder, GlibcxxNeed.Library))) { Directory.Delete(building, recursive: true); }
        return folder;
    }
}

/// Runs the load fallback when Lifting.Core is first used, before any TorchSharp call it makes.
internal static class NativeBackendInitializer
{
#pragma warning disable CA2255 // A library initializer on purpose: script hosts must not need a call before the first use.
    [ModuleInitializer]
    internal static void Initialize() => NativeBackend.Ensure();
#pragma warning restore CA2255
}
