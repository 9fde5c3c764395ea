"""The f32 floor of the long-sequence gradients: PyTorch, float32 against float64, same values.

At T = 10,000 with inputs uniform in +-1e4 (B = 4, I = 8, H = 16), the float32 weight gradients
of torch.nn.LSTM/GRU/RNN differ from their float64 ones by about 1e-2 in max |a-b|/max(1,|b|)
(and the outputs y by about 2e-4): the rounding of the input projection of inputs of 1e4, which
the gates amplify, not the sum over the T*B rows. tests/long_sequence.rs explains why its sum
test uses a problem whose step gradients are exact. Run: python3 benches/long_sequence_torch.py
"""
import torch, sys
torch.manual_seed(0)
T,B,I,H=10000,4,8,16
for cell in ["LSTM","GRU","RNN"]:
    m64=getattr(torch.nn,cell)(I,H).double()
    x=(torch.rand(T,B,I,dtype=torch.float64)*2-1)*1e4
    x=x.float().double()
    for p in m64.parameters(): p.data=p.data.float().double()
    m32=getattr(torch.nn,cell)(I,H).float(); m32.load_state_dict({k:v.float() for k,v in m64.state_dict().items()})
    dy=(torch.rand(T,B,H,dtype=torch.float64)*2-1).float().double()
    out=[]
    for m,dt in ((m64,torch.float64),(m32,torch.float32)):
        m.zero_grad(); y,_=m(x.to(dt)); (y*dy.to(dt)).sum().backward()
        out.append((y.detach().double(),{k:p.grad.double() for k,p in m.named_parameters()}))
    err=lambda a,b: ((a-b).abs()/b.abs().clamp(min=1)).max().item()
    print(cell, "y", "%.2e"%err(out[1][0],out[0][0]), " ".join("%s %.2e"%(k,err(out[1][1][k],out[0][1][k])) for k in out[0][1]))
