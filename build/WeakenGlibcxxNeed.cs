// The LibTorchSharp load fix (docs/engine.md), in one file used twice:
//   - as the source of an MSBuild inline task (RoslynCodeTaskFactory) in build/Lifting.Core.targets,
//     which this repository imports for its own projects and the Lifting.Core package ships in its
//     build/ and buildTransitive/ folders, so every project that references the package runs it;
//   - compiled into Lifting.Core (LIFTING_CORE defined) for the run-time fallback of hosts with no
//     build output of their own, such as `dotnet fsi` (NativeBackend.cs).
//
// Why: TorchSharp 0.107.0's libLibTorchSharp.so declares a need for GLIBCXX_3.4.32 for a single
// symbol, std::ios_base_library_init(), a link-time marker that is never called at run time.
// Debian 12's libstdc++ provides versions up to GLIBCXX_3.4.30, so the dynamic loader refuses to
// load the library. Marking that one version need weak (VER_FLG_WEAK in its .gnu.version_r
// entry) lets the loader accept the library; every other version need stays strict.
//
// The task edits only copies under a build or publish output folder, and only when no system
// libstdc++ provides the version (or when asked to always do so, for a package that ships the
// library, such as the `lifting` tool). It writes beside the file and renames, so a copy that is a
// hard link into the NuGet cache is replaced, never written through. It is idempotent.
using System;
using System.IO;
using System.Text;
#if !LIFTING_CORE
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

public class WeakenGlibcxxNeed : Task
{
    [Required] public string Directory { get; set; } = "";
    [Required] public string Version { get; set; } = "";
    /// Weaken even where the system provides the version (a package built here may run elsewhere).
    public bool Always { get; set; }

    public override bool Execute()
    {
        if (!System.IO.Directory.Exists(Directory)) return true;
        var libraries = System.IO.Directory.GetFiles(Directory, GlibcxxNeed.Library, SearchOption.AllDirectories);
        if (libraries.Length == 0) return true;
        if (!Always && GlibcxxNeed.SystemProvides(Version))
        {
            Log.LogMessage(MessageImportance.Low, $"System libstdc++ provides {Version}; {GlibcxxNeed.Library} left as shipped.");
            return true;
        }
        foreach (var path in libraries)
        {
            try
            {
                var changed = GlibcxxNeed.WeakenFile(path, Version);
                Log.LogMessage(MessageImportance.Normal,
                    changed ? $"Marked {Version} weak in {path}" : $"{Version} already weak or absent in {path}");
            }
            catch (Exception e)
            {
                Log.LogError($"Could not patch {path}: {e.Message}");
                return false;
            }
        }
        return true;
    }
}
#endif

/// Reads and sets the weak flag of one version need of libLibTorchSharp.so (64-bit little-endian ELF).
internal static class GlibcxxNeed
{
    public const string Library = "libLibTorchSharp.so";

    const ushort VerFlgWeak = 0x2;
    const uint ShtGnuVerneed = 0x6ffffffe;

    static readonly string[] LibstdcxxCandidates =
    {
        "/usr/lib/x86_64-linux-gnu/libstdc++.so.6",
        "/lib/x86_64-linux-gnu/libstdc++.so.6",
        "/usr/lib64/libstdc++.so.6",
        "/usr/lib/libstdc++.so.6",
        "/lib64/libstdc++.so.6",
    };

    public enum Outcome { Absent, AlreadyWeak, Weakened }

    /// True when a system libstdc++.so.6 defines `version` (its name appears in the file).
    public static bool SystemProvides(string version)
    {
        var needle = Encoding.ASCII.GetBytes(version + "\0");
        foreach (var candidate in LibstdcxxCandidates)
        {
            if (!File.Exists(candidate)) continue;
            var bytes = File.ReadAllBytes(candidate);
            if (IndexOf(bytes, needle) >= 0) return true;
        }
        return false;
    }

    static int IndexOf(byte[] haystack, byte[] needle)
    {
        for (int i = 0; i + needle.Length <= haystack.Length; i++)
        {
            int j = 0;
            while (j < needle.Length && haystack[i + j] == needle[j]) j++;
            if (j == needle.Length) return i;
        }
        return -1;
    }

    /// Weakens the need in the file at `path` (write beside, then rename). True when it changed.
    public static bool WeakenFile(string path, string version)
    {
        var elf = File.ReadAllBytes(path);
        if (Weaken(elf, version) != Outcome.Weakened) return false;
        var temp = path + ".weakening";
        File.WriteAllBytes(temp, elf);
        File.Replace(temp, path, null); // a rename: a hard-linked original is left untouched
        return true;
    }

    /// Sets VER_FLG_WEAK on the Vernaux entry named `version` in the image `elf`, in memory.
    public static Outcome Weaken(byte[] elf, string version)
    {
        if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != (byte)'E' || elf[2] != (byte)'L' || elf[3] != (byte)'F')
            throw new InvalidDataException("not an ELF file");
        if (elf[4] != 2 || elf[5] != 1)
            throw new InvalidDataException("expected a 64-bit little-endian ELF file");

        ulong shoff = BitConverter.ToUInt64(elf, 0x28);
        int shentsize = BitConverter.ToUInt16(elf, 0x3A);
        int shnum = BitConverter.ToUInt16(elf, 0x3C);

        for (int s = 0; s < shnum; s++)
        {
            int sh = checked((int)shoff + s * shentsize);
            uint type = BitConverter.ToUInt32(elf, sh + 4);
            if (type != ShtGnuVerneed) continue;

            int offset = checked((int)BitConverter.ToUInt64(elf, sh + 0x18));
            uint link = BitConverter.ToUInt32(elf, sh + 0x28);
            uint count = BitConverter.ToUInt32(elf, sh + 0x2C); // sh_info: number of Verneed entries
            int strtab = checked((int)BitConverter.ToUInt64(elf, checked((int)shoff + (int)link * shentsize) + 0x18));

            var outcome = Outcome.Absent;
            int need = offset;
            for (uint n = 0; n < count; n++)
            {
                int auxCount = BitConverter.ToUInt16(elf, need + 2);
                int aux = need + (int)BitConverter.ToUInt32(elf, need + 8);
                for (int a = 0; a < auxCount; a++)
                {
                    int name = strtab + (int)BitConverter.ToUInt32(elf, aux + 8);
                    if (CStringEquals(elf, name, version))
                    {
                        ushort flags = BitConverter.ToUInt16(elf, aux + 4);
                        if ((flags & VerFlgWeak) == 0)
                        {
                            flags |= VerFlgWeak;
                            elf[aux + 4] = (byte)(flags & 0xff);
                            elf[aux + 5] = (byte)(flags >> 8);
                            outcome = Outcome.Weakened;
                        }
                        else if (outcome == Outcome.Absent) outcome = Outcome.AlreadyWeak;
                    }
                    uint next = BitConverter.ToUInt32(elf, aux + 12);
                    if (next == 0) break;
                    aux += (int)next;
                }
                uint nextNeed = BitConverter.ToUInt32(elf, need + 12);
                if (nextNeed == 0) break;
                need += (int)nextNeed;
            }
            return outcome;
        }
        return Outcome.Absent;
    }

    static bool CStringEquals(byte[] bytes, int at, string value)
    {
        for (int i = 0; i < value.Length; i++)
            if (at + i >= bytes.Length || bytes[at + i] != (byte)value[i]) return false;
        return at + value.Length < bytes.Length && bytes[at + value.Length] == 0;
    }
}
