using static TorchSharp.torch;
var x = randn(3, 4, requires_grad: true);
var y = (x * x).sum();
y.backward();
Console.WriteLine($"{x.grad!.sub(x * 2).abs().max().item<float>()} threads={TorchSharp.torch.get_num_threads()}");
return 0;
