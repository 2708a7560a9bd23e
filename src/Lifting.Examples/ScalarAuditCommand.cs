using Lifting.Testing;

namespace Lifting.Examples;

/// `scalar-audit [ASSEMBLY.dll ...]`: every TorchSharp Scalar temporary in the compiled code
/// (docs/engine.md, "A TorchSharp race"), per method and callee, and the count per assembly; by
/// default Lifting.Core, the host (lifting.dll), Lifting.FSharp and Lifting.Distributed as built beside this program.
public static class ScalarAuditCommand
{
    public static int Run(string[] paths)
    {
        var dir = AppContext.BaseDirectory;
        if (paths.Length == 0) paths = new[] { "Lifting.Core.dll", "lifting.dll", "Lifting.FSharp.dll", "Lifting.Distributed.dll" }.Select(f => Path.Combine(dir, f)).ToArray();
        int total = 0;
        foreach (var path in paths)
        {
            var sites = ScalarAudit.Sites(path);
            foreach (var site in sites) Console.WriteLine($"  {site}");
            var count = sites.Sum(s => s.Count);
            Console.WriteLine($"{Path.GetFileName(path)}: {count} Scalar temporaries at {sites.Count} call sites");
            total += count;
        }
        Console.WriteLine($"total {total}");
        return 0;
    }
}
