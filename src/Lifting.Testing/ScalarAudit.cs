using System.Collections.Immutable;
using System.Reflection.Emit;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;

namespace Lifting.Testing;

/// Finds, in a compiled assembly, every place where a number becomes a temporary TorchSharp
/// `Scalar`: an implicit conversion (`t.mul(0.5)`, `t > 0`, `add_(u, alpha: s)`, `lerp_(u, w)`),
/// or a call to a TorchSharp member that makes one inside itself from a number argument
/// (`t * 0.5`, `1 - t`, `t / n`, `t.add(u, 2.0)`, …). Such a Scalar's finaliser may free its native
/// value while LibTorch still reads it (docs/engine.md, "A TorchSharp race"), so the engine's hot
/// paths pass a `Lifting.Scalars` value or one held by `using` instead. The audit reads the IL, so
/// it sees what the compiler chose, overloads and operators included, which a text search cannot.
/// A Scalar created explicitly (`x.ToScalar()`, `Scalars.Of(x)`) is not counted.
public static class ScalarAudit
{
    /// One method of the audited assembly and how many Scalar temporaries it makes, by callee.
    public sealed record Site(string Method, string Callee, int Count)
    {
        public override string ToString() => $"{Count,3} {Method} <- {Callee}";
    }

    private static readonly Lazy<IReadOnlySet<string>> creators = new(FindCreators);

    /// The TorchSharp members (as "Type::Name(parameter types)") that make a Scalar from a number
    /// inside themselves, directly or through other TorchSharp members.
    public static IReadOnlySet<string> TorchSharpCreators => creators.Value;

    /// Every Scalar temporary in the assembly at `path`, grouped by method and callee.
    public static IReadOnlyList<Site> Sites(string path)
    {
        var set = TorchSharpCreators;
        var sites = new List<Site>();
        using var file = new Reader(path);
        foreach (var (method, calls) in file.Calls())
            foreach (var group in calls.Where(c => IsImplicitConversion(c) || set.Contains(c)).GroupBy(c => c))
                sites.Add(new Site(method, group.Key, group.Count()));
        return sites;
    }

    private static bool IsImplicitConversion(string callee) => callee.StartsWith("TorchSharp.Scalar::op_Implicit(", StringComparison.Ordinal);

    private static IReadOnlySet<string> FindCreators()
    {
        var path = typeof(TorchSharp.Scalar).Assembly.Location;
        using var file = new Reader(path);
        var calls = file.Calls().GroupBy(x => x.Method).ToDictionary(g => g.Key, g => g.SelectMany(x => x.Calls).ToArray());
        // A member that disposes what it made (`using var s = x.ToScalar()`, e.g. softshrink)
        // keeps it alive through its native call and does not count.
        var found = new HashSet<string>(calls.Where(x => x.Value.Any(c => IsImplicitConversion(c) || c.StartsWith("TorchSharp.ScalarExtensionMethods::ToScalar(", StringComparison.Ordinal))
                && !x.Value.Any(c => c.EndsWith("::Dispose()", StringComparison.Ordinal)))
            .Select(x => x.Key).Where(m => !IsImplicitConversion(m) && !m.StartsWith("TorchSharp.ScalarExtensionMethods::", StringComparison.Ordinal)));
        for (bool grew = true; grew;)
        {
            grew = false;
            foreach (var (method, callees) in calls)
                if (!found.Contains(method) && !IsImplicitConversion(method) && callees.Any(found.Contains))
                    grew |= found.Add(method);
        }
        return found;
    }

    private static readonly string[] numbers = { "System.Double", "System.Single", "System.Int32", "System.Int64", "System.Int16", "System.Byte", "System.Boolean", "System.Half" };

    private static bool TakesNumber(string member)
    {
        int open = member.IndexOf('(');
        var parameters = member[(open + 1)..^1];
        return numbers.Any(n => parameters.Contains(n, StringComparison.Ordinal));
    }

    /// Reads method bodies and names their call targets as "Type::Name(parameter types)".
    private sealed class Reader : IDisposable
    {
        private static readonly OpCode[] one = new OpCode[256], two = new OpCode[256];
        private readonly FileStream stream;
        private readonly PEReader pe;
        private readonly MetadataReader md;
        private readonly Names names;

        static Reader()
        {
            foreach (var f in typeof(OpCodes).GetFields(System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.Static))
            {
                var op = (OpCode)f.GetValue(null)!;
                var v = (ushort)op.Value;
                if (v < 0x100) one[v] = op;
                else if (v >> 8 == 0xFE) two[v & 0xFF] = op;
            }
        }

        public Reader(string path)
        {
            stream = File.OpenRead(path);
            pe = new PEReader(stream);
            md = pe.GetMetadataReader();
            names = new Names(md);
        }

        public void Dispose() { pe.Dispose(); stream.Dispose(); }

        public IEnumerable<(string Method, List<string> Calls)> Calls()
        {
            foreach (var th in md.TypeDefinitions)
                foreach (var mh in md.GetTypeDefinition(th).GetMethods())
                {
                    var m = md.GetMethodDefinition(mh);
                    if (m.RelativeVirtualAddress == 0) continue;
                    var il = pe.GetMethodBody(m.RelativeVirtualAddress).GetILBytes() ?? Array.Empty<byte>();
                    var calls = new List<string>();
                    for (int i = 0; i < il.Length;)
                    {
                        OpCode op;
                        if (il[i] == 0xFE) { op = two[il[i + 1]]; i += 2; } else { op = one[il[i]]; i += 1; }
                        int size = op.OperandType switch
                        {
                            OperandType.InlineNone => 0,
                            OperandType.ShortInlineBrTarget or OperandType.ShortInlineI or OperandType.ShortInlineVar => 1,
                            OperandType.InlineVar => 2,
                            OperandType.InlineI8 or OperandType.InlineR => 8,
                            OperandType.InlineSwitch => 4 + 4 * BitConverter.ToInt32(il, i),
                            _ => 4,
                        };
                        if (op == OpCodes.Call || op == OpCodes.Callvirt || op == OpCodes.Newobj || op == OpCodes.Ldftn)
                            if (names.Member(MetadataTokens.EntityHandle(BitConverter.ToInt32(il, i))) is { } callee) calls.Add(callee);
                        i += size;
                    }
                    yield return (names.Method(mh), calls);
                }
        }
    }

    private sealed class Names : ISignatureTypeProvider<string, object?>
    {
        private readonly MetadataReader md;
        public Names(MetadataReader md) => this.md = md;

        public string Method(MethodDefinitionHandle handle)
        {
            var m = md.GetMethodDefinition(handle);
            var sig = m.DecodeSignature(this, null);
            return $"{Type(m.GetDeclaringType())}::{md.GetString(m.Name)}({string.Join(",", sig.ParameterTypes)})";
        }

        public string? Member(EntityHandle handle)
        {
            switch (handle.Kind)
            {
                case HandleKind.MethodDefinition:
                    return Method((MethodDefinitionHandle)handle);
                case HandleKind.MemberReference:
                    var r = md.GetMemberReference((MemberReferenceHandle)handle);
                    if (r.GetKind() != MemberReferenceKind.Method) return null;
                    var sig = r.DecodeMethodSignature(this, null);
                    var parent = r.Parent.Kind switch
                    {
                        HandleKind.TypeReference or HandleKind.TypeDefinition => Type((EntityHandle)r.Parent),
                        HandleKind.TypeSpecification => Generic(md.GetTypeSpecification((TypeSpecificationHandle)r.Parent).DecodeSignature(this, null)),
                        _ => "?",
                    };
                    return $"{parent}::{md.GetString(r.Name)}({string.Join(",", sig.ParameterTypes)})";
                case HandleKind.MethodSpecification:
                    return Member(md.GetMethodSpecification((MethodSpecificationHandle)handle).Method);
                default:
                    return null;
            }
        }

        private static string Generic(string name) => name.Contains('<') ? name[..name.IndexOf('<')] : name;

        private string Type(EntityHandle handle) => handle.Kind switch
        {
            HandleKind.TypeDefinition => Type((TypeDefinitionHandle)handle),
            HandleKind.TypeReference => Type((TypeReferenceHandle)handle),
            _ => "?",
        };

        private string Type(TypeDefinitionHandle handle)
        {
            var t = md.GetTypeDefinition(handle);
            var outer = t.GetDeclaringType();
            return outer.IsNil ? Join(md.GetString(t.Namespace), md.GetString(t.Name)) : Type(outer) + "/" + md.GetString(t.Name);
        }

        private string Type(TypeReferenceHandle handle)
        {
            var t = md.GetTypeReference(handle);
            return t.ResolutionScope.Kind == HandleKind.TypeReference
                ? Type((TypeReferenceHandle)t.ResolutionScope) + "/" + md.GetString(t.Name)
                : Join(md.GetString(t.Namespace), md.GetString(t.Name));
        }

        private static string Join(string ns, string name) => ns.Length == 0 ? name : ns + "." + name;

        public string GetArrayType(string elementType, ArrayShape shape) => elementType + "[" + new string(',', shape.Rank - 1) + "]";
        public string GetByReferenceType(string elementType) => elementType + "&";
        public string GetFunctionPointerType(MethodSignature<string> signature) => "fnptr";
        public string GetGenericInstantiation(string genericType, ImmutableArray<string> typeArguments) => genericType + "<" + string.Join(",", typeArguments) + ">";
        public string GetGenericMethodParameter(object? genericContext, int index) => "!!" + index;
        public string GetGenericTypeParameter(object? genericContext, int index) => "!" + index;
        public string GetModifiedType(string modifier, string unmodifiedType, bool isRequired) => unmodifiedType;
        public string GetPinnedType(string elementType) => elementType;
        public string GetPointerType(string elementType) => elementType + "*";
        public string GetPrimitiveType(PrimitiveTypeCode typeCode) => "System." + typeCode switch
        {
            PrimitiveTypeCode.Boolean => "Boolean", PrimitiveTypeCode.Byte => "Byte", PrimitiveTypeCode.SByte => "SByte",
            PrimitiveTypeCode.Char => "Char", PrimitiveTypeCode.Int16 => "Int16", PrimitiveTypeCode.UInt16 => "UInt16",
            PrimitiveTypeCode.Int32 => "Int32", PrimitiveTypeCode.UInt32 => "UInt32", PrimitiveTypeCode.Int64 => "Int64",
            PrimitiveTypeCode.UInt64 => "UInt64", PrimitiveTypeCode.Single => "Single", PrimitiveTypeCode.Double => "Double",
            PrimitiveTypeCode.String => "String", PrimitiveTypeCode.Object => "Object", PrimitiveTypeCode.Void => "Void",
            PrimitiveTypeCode.IntPtr => "IntPtr", PrimitiveTypeCode.UIntPtr => "UIntPtr", PrimitiveTypeCode.TypedReference => "TypedReference",
            _ => typeCode.ToString(),
        };
        public string GetSZArrayType(string elementType) => elementType + "[]";
        public string GetTypeFromDefinition(MetadataReader reader, TypeDefinitionHandle handle, byte rawTypeKind) => Type(handle);
        public string GetTypeFromReference(MetadataReader reader, TypeReferenceHandle handle, byte rawTypeKind) => Type(handle);
        public string GetTypeFromSpecification(MetadataReader reader, object? genericContext, TypeSpecificationHandle handle, byte rawTypeKind) =>
            reader.GetTypeSpecification(handle).DecodeSignature(this, genericContext);
    }
}
