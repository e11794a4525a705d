// AudioWorklet processor: hands each block of microphone PCM (mixed to mono) to the page.
class StlserCapture extends AudioWorkletProcessor {
  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length > 0 && channels[0].length > 0) {
      const n = channels[0].length;
      const mono = new Float32Array(n);
      for (const ch of channels) {
        for (let i = 0; i < n; i++) mono[i] += ch[i] / channels.length;
      }
      this.port.postMessage(mono, [mono.buffer]);
    }
    return true;
  }
}

registerProcessor("stlser-capture", StlserCapture);
